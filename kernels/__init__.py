"""Triton kernels, each beside a plain torch reference of the same function.

Importing a kernel module imports triton; whether its kernels run compiled (CUDA) or in the CPU
interpreter is decided by TRITON_INTERPRET at the time that module is first imported
(``@triton.jit`` reads it when it decorates), see `engine.device.triton_interpreted`.
"""
