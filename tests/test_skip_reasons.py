"""Skip reasons counted by kind (the run's notice and summary.json's skipped_reasons)."""
from engine.loaders.decode import HEIF_HINT
from engine.skip_reasons import count_reasons, reason_kind, skipped_note


def test_reason_kind_groups_reasons_that_name_files_or_sizes():
    assert reason_kind("corrupt or truncated image: broken data stream") == "corrupt or truncated image"
    assert reason_kind("duplicate of /photos/a.jpg") == reason_kind("duplicate of b.jpg: x")
    assert reason_kind("invalid dimensions 0x5") == reason_kind("invalid dimensions 7x0")
    assert reason_kind("empty file (0 bytes)") == "empty file (0 bytes)"
    assert reason_kind("decode failed (nvjpeg): bad; PIL: worse") == "decode failed (nvjpeg)"
    # imgcluster cluster's reasons: the colon inside the parentheses is not the end of the kind
    removed = "removed since the run (not re-extracted: rerun `imgcluster run`)"
    assert reason_kind(removed) == removed
    # the install hint survives: it is what the user has to do
    assert HEIF_HINT in reason_kind(f"HEIF image: {HEIF_HINT}")


def test_count_and_note_most_frequent_first():
    reasons = [f"HEIF image: {HEIF_HINT}"] * 3 + ["empty file (0 bytes)"] * 2 + [
        "corrupt or truncated image: a", "corrupt or truncated image: b", "duplicate of x.jpg", "not found"]
    counts = count_reasons(reasons)
    assert list(counts.values()) == [3, 2, 2, 1, 1] and sum(counts.values()) == len(reasons)
    assert list(counts)[1:3] == ["corrupt or truncated image", "empty file (0 bytes)"]  # ties by name
    note = skipped_note(counts, limit=3)
    assert note.startswith("Skipped 9 file(s): 3 HEIF image: install pillow-heif")
    assert note.endswith("; 2 file(s) of 2 more kind(s) (see skipped.csv)")
    # one kind left over is named rather than counted
    assert skipped_note(counts, limit=4).endswith("; 1 duplicate (the same file reached twice); 1 not found (see skipped.csv)")
    assert skipped_note({}) == ""
