import json

from pipeline.rundir import RunDir, write_bytes


def test_atomic_write_leaves_no_temp_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    write_bytes(target, b"old")

    class Boom(Exception):
        pass

    from pipeline.rundir import atomic_path

    try:
        with atomic_path(target) as t:
            t.write_bytes(b"half")
            raise Boom
    except Boom:
        pass
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_stage_is_reused_and_rebuilt_when_tampered(tmp_path):
    calls = []

    def body(folder):
        calls.append(1)
        write_bytes(folder / "out.txt", b"result")
        return {"n": len(calls)}

    run = RunDir(tmp_path)
    a = run.stage("s", {"config": {"x": 1}}, body)
    b = RunDir(tmp_path).stage("s", {"config": {"x": 1}}, body)  # a fresh process would do this
    assert (a.reused, b.reused, len(calls)) == (False, True, 1) and b.digest == a.digest
    (tmp_path / "s" / "out.txt").write_bytes(b"resulT")  # a flipped byte
    c = RunDir(tmp_path).stage("s", {"config": {"x": 1}}, body)
    assert not c.reused and len(calls) == 2
    d = RunDir(tmp_path).stage("s", {"config": {"x": 2}}, body)  # config changed
    assert not d.reused and len(calls) == 3
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["s"]["files"][0]["path"] == "s/out.txt"


def _finished(tmp_path):
    run = RunDir(tmp_path)
    run.stage("s", {"config": 1}, lambda f: write_bytes(f / "w.bin", b"0123456789") or {})
    return tmp_path / "s" / "w.bin"


def test_a_truncated_artefact_is_rebuilt(tmp_path):
    f = _finished(tmp_path)
    f.write_bytes(b"01234")
    calls = []
    res = RunDir(tmp_path).stage(
        "s", {"config": 1}, lambda d: calls.append(1) or write_bytes(d / "w.bin", b"new") or {}
    )
    assert not res.reused and calls and f.read_bytes() == b"new"


def test_a_wrong_hash_in_the_manifest_is_rebuilt(tmp_path):
    _finished(tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["stages"]["s"]["files"][0]["sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    assert not RunDir(tmp_path).stage("s", {"config": 1}, lambda d: {}).reused
