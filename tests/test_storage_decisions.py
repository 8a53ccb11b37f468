"""The decisions storage.py makes so that callers never ask "is this a URI?" (mlem_ray/storage.py):
what each one does for a local path, and that a URI is never treated as a local file. Round trips
against a real S3 server are in tests/test_object_storage.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from mlem_ray import storage

URI = "s3://bucket/sweep"


def test_absolute_keeps_uris_and_resolves_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("runs/x") == str(tmp_path / "runs" / "x")
    assert storage.absolute(URI) == URI
    assert storage.local_path("runs/x") == tmp_path / "runs" / "x" and storage.local_path(URI) is None


def test_is_location_tells_paths_and_uris_from_bare_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("method: coles\n")
    assert storage.is_location("mine.yaml") and storage.is_location("spaces/other.yaml")
    assert storage.is_location(URI + "/space.yaml")
    assert not storage.is_location("quick") and not storage.is_location("mlem.yaml")


def test_ensure_dir_creates_local_directories_only(tmp_path):
    assert storage.ensure_dir(tmp_path / "a" / "b") is True and (tmp_path / "a" / "b").is_dir()
    assert storage.ensure_dir(tmp_path / "a" / "b") is False  # already there: nothing to undo
    assert storage.ensure_dir(URI) is False


def test_check_writable_touches_nothing_locally(tmp_path):
    storage.check_writable(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_worker_env_only_for_object_storage(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert storage.worker_env_for("/tmp/a", "") is None
    env = storage.worker_env_for("/tmp/a", URI)
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "when_required"


def test_writable_dir_is_the_path_itself_and_creates_nothing_until_written(tmp_path):
    with storage.writable_dir(tmp_path / "report") as local:
        assert local == tmp_path / "report" and not local.exists()
    with pytest.raises(RuntimeError), storage.writable_dir(tmp_path / "r2") as local:
        raise RuntimeError("a refused write")
    assert not (tmp_path / "r2").exists()


def test_writable_dir_on_object_storage_uploads_with_the_marker_last(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(storage, "upload", lambda local, loc: calls.append(("upload", sorted(p.name for p in Path(local).iterdir()))))
    monkeypatch.setattr(storage, "write_bytes", lambda loc, data: calls.append(("put", loc, data)))
    with storage.writable_dir(URI + "/data", last="schema.json") as local:
        assert local.is_dir() and storage.local_path(URI) is None
        (local / "sequences.arrow").write_bytes(b"rows")
        (local / "schema.json").write_bytes(b"{}")
    assert calls == [("upload", ["sequences.arrow"]), ("put", URI + "/data/schema.json", b"{}")]
    assert not local.exists()  # the temporary directory is gone
    calls.clear()
    with pytest.raises(RuntimeError), storage.writable_dir(URI + "/data") as local:
        raise RuntimeError("failed before the upload")
    assert calls == []  # nothing half-written reaches the store


def test_staging_is_the_path_itself_locally(tmp_path):
    with storage.staging(tmp_path / "run") as out:
        assert out == tmp_path / "run"


def test_staging_on_object_storage_fetches_uploads_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    seen = []

    def download(loc, local):
        Path(local).mkdir(parents=True)
        (Path(local) / "model.pt").write_bytes(b"state")
        seen.append(("download", loc))

    monkeypatch.setattr(storage, "download", download)
    monkeypatch.setattr(storage, "upload", lambda local, loc: seen.append(("upload", loc, sorted(
        str(p.relative_to(local)) for p in Path(local).rglob("*") if p.is_file()))))
    with storage.staging(URI + "/run", fetch=("last",)) as out:
        assert (out / "last" / "model.pt").read_bytes() == b"state"
        (out / "metrics.jsonl").write_text("{}\n")
    assert seen == [("download", URI + "/run/last"), ("upload", URI + "/run", ["last/model.pt", "metrics.jsonl"])]
    assert not out.exists()
