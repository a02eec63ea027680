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
