"""Damage planted in a store holding one clean TINY run, then the CLI meets it.

d. One kind of damage per case: `memotune cache verify` exits 1 naming it (where
   it is damage), a `memotune run` of the TINY config completes with the
   reference objective (recomputing exactly what the damage destroyed), and
   afterwards the store is clean, or `memotune cache gc` makes it clean.
   File damage only matters to a run that reads the entry, so those cases also
   evict a downstream entry (as if it had never been computed): the run must
   fetch the damaged entry.
e. A Prefect pickle record whose payload creates a marker file when unpickled,
   in place of a committed stage's record: the run never unpickles it, reports
   the stage `cached` and rewrites the record as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from faultkit import HERE, STAGES, same_keys, stage_keys, statuses, unclean, variant

from cache.records import check_record
from cache.store import ArtifactStore

pytestmark = pytest.mark.slow

DP, IT, TF, EV = range(4)
ORPHAN_KEY = "0f" * 32
FAILURE_NAME = "5b0e5a0a9b2c4d6e8f1a3c5e7a9b1d3f"  # Prefect names failure records by a uuid


@dataclass
class Site:
    """The store of one case and the TINY config's keys in it."""

    root: Path
    keys: list[str]
    tmp: Path

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def k(self, stage: int) -> str:
        return self.keys[stage]

    def file(self, stage: int, name: str) -> Path:
        return self.root / "objects" / self.k(stage) / "files" / name

    def manifest(self, stage: int) -> Path:
        return self.root / "objects" / self.k(stage) / "manifest.json"

    def record(self, name: str) -> Path:
        return self.root / "prefect" / name

    def evict(self, stage: int) -> None:
        """As if this stage had never been computed (a downstream run must read upstream)."""
        ArtifactStore(self.url).delete(self.k(stage))


@dataclass
class Expect:
    names: list[str]  # in `cache verify`'s output before the run
    verify_exit: int = 1
    statuses: dict[str, str] | None = None  # stages not named: "cached"; None: not checked
    after: Callable[[], None] | None = None
    notes: list[str] = field(default_factory=list)


def flipped_byte(s: Site) -> Expect:
    f = s.file(DP, "target_train.parquet")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    s.evict(EV)
    return Expect([s.k(DP)[:16], "target_train.parquet", "sha256"],
                  statuses={"data_prep": "computed", "evaluate": "computed"})


def truncated_file(s: Site) -> Expect:
    f = s.file(TF, "checkpoint/model.safetensors")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    s.evict(EV)
    return Expect([s.k(TF)[:16], "checkpoint/model.safetensors", "size"],
                  statuses={"target_finetune": "computed", "evaluate": "computed"})


def deleted_file(s: Site) -> Expect:
    s.file(DP, "tokenizer/tokenizer.json").unlink()
    s.evict(EV)
    return Expect([s.k(DP)[:16], "tokenizer/tokenizer.json", "missing"],
                  statuses={"data_prep": "computed", "evaluate": "computed"})


def extra_file(s: Site) -> Expect:
    s.file(DP, "stray.parquet").write_bytes(b"PAR1 not part of this entry")
    s.evict(EV)
    return Expect([s.k(DP)[:16], "stray.parquet", "not in the manifest"])


def symlinked_file(s: Site) -> Expect:
    victim = s.tmp / "victim.json"
    victim.write_text('{"victim": "must survive the repair"}')
    f = s.file(DP, "info.json")
    f.unlink()
    f.symlink_to(victim)
    s.evict(EV)

    def victim_intact() -> None:
        assert victim.read_text() == '{"victim": "must survive the repair"}'
        assert not f.is_symlink()

    return Expect([s.k(DP)[:16], "info.json"], after=victim_intact,
                  statuses={"data_prep": "computed", "evaluate": "computed"})


def deleted_manifest(s: Site) -> Expect:
    s.manifest(TF).unlink()  # files and Prefect's record left
    assert s.record(s.k(TF)).exists()
    return Expect([s.k(TF)[:16], "orphan"], statuses={"target_finetune": "computed"})


def manifest_bad_json(s: Site) -> Expect:
    m = s.manifest(TF)
    m.write_bytes(m.read_bytes()[:40])
    return Expect([s.k(TF)[:16], "manifest unreadable"],
                  statuses={"target_finetune": "computed"})


def manifest_escaping_name(s: Site) -> Expect:
    m = s.manifest(DP)
    doc = json.loads(m.read_text())
    doc["files"][0]["name"] = "../x"
    m.write_text(json.dumps(doc))
    return Expect([s.k(DP)[:16], "manifest unreadable", "../x"],
                  statuses={"data_prep": "computed"})


def garbage_record(s: Site) -> Expect:
    s.record(s.k(IT)).write_bytes(b"\x80\x04\x95garbage\xff\x00 not a record")

    def record_is_json_again() -> None:
        check_record(s.record(s.k(IT)).read_bytes(), s.k(IT))

    return Expect([s.k(IT)[:16], "not JSON"], statuses={}, after=record_is_json_again)


def orphan_record(s: Site) -> Expect:
    record = json.loads(s.record(s.k(EV)).read_text())
    record["metadata"]["storage_key"] = ORPHAN_KEY
    record["result"] = json.dumps({**json.loads(record["result"]), "key": ORPHAN_KEY})
    s.record(ORPHAN_KEY).write_text(json.dumps(record))
    return Expect([ORPHAN_KEY[:16], "orphan"], statuses={})


def failure_record(s: Site) -> Expect:
    s.record(FAILURE_NAME).write_text(json.dumps(
        {"metadata": {"storage_key": FAILURE_NAME, "serializer": {"type": "json"}},
         "result": json.dumps({"type": "exception", "message": "stage failed"})}))
    return Expect([FAILURE_NAME[:16], "not a result record"], statuses={})


def missing_record(s: Site) -> Expect:
    """Not damage: a kill between the manifest and Prefect's record. The rerun computes
    nothing and must not charge the old compute seconds."""
    s.record(s.k(IT)).unlink()

    def record_back() -> None:
        check_record(s.record(s.k(IT)).read_bytes(), s.k(IT))

    return Expect([], verify_exit=0, statuses={}, after=record_back)


CASES = {
    "flipped byte in a file": flipped_byte,
    "truncated file": truncated_file,
    "deleted file": deleted_file,
    "extra file in an entry": extra_file,
    "symlink in place of a file": symlinked_file,
    "deleted manifest, record left": deleted_manifest,
    "manifest not JSON": manifest_bad_json,
    "manifest naming ../x": manifest_escaping_name,
    "record of garbage bytes": garbage_record,
    "orphan record": orphan_record,
    "failure record prefect/<32-hex>": failure_record,
    "missing record, entry left": missing_record,
}


@pytest.mark.parametrize("case", list(CASES))
def test_planted_damage_is_reported_and_repaired(case, cli, reference, warm_store, fault_log,
                                                 tmp_path):
    doc = variant()
    ref = reference.summary(doc)
    site = Site(Path(warm_store.removeprefix("file://")), stage_keys(doc), tmp_path)
    expect = CASES[case](site)
    with fault_log.trial(f"d. {case}") as row:
        # verify's findings are checked at the end, so a wrong verdict still lets the
        # run and the cleanup show what they do with the damage
        before = cli.verify(site.url)
        findings = []
        if before.returncode != expect.verify_exit:
            findings.append(f"cache verify exit {before.returncode}, expected "
                            f"{expect.verify_exit}:\n{before.stdout}{before.stderr}")
        findings += [f"cache verify does not name {name!r}:\n{before.stdout}"
                     for name in expect.names if name not in before.stdout]

        done = cli.run(doc, site.url)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        same_keys(summary, doc)
        assert summary["objective"] == ref["objective"]
        assert summary["metrics"] == ref["metrics"]
        if expect.statuses is not None:
            assert statuses(summary) == {n: expect.statuses.get(n, "cached") for n in STAGES}
        for r in summary["stages"]:
            if r["status"] == "cached":
                assert r["compute_s"] == 0.0, r

        left = unclean(site.url)
        if left:
            gc = cli.gc(site.url, "--grace", "0s")
            assert gc.returncode == 0, gc.stdout + gc.stderr
            row.notes.append("gc needed")
            assert unclean(site.url) == {}, (
                f"left after the run: {left}\ngc: {gc.stdout.strip()}\n"
                f"left after gc: {unclean(site.url)}")
        if expect.after is not None:
            expect.after()
        assert not findings, "\n".join(findings)


def test_a_planted_pickle_record_is_never_unpickled(cli, reference, warm_store, fault_log,
                                                    tmp_path):
    from pickle_payload import Payload
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    doc = variant()
    ref = reference.summary(doc)
    key = stage_keys(doc)[TF]
    root = Path(warm_store.removeprefix("file://"))
    cli.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), cli.env.get("PYTHONPATH")) if p)

    def pickle_record(marker: Path) -> bytes:
        return ResultRecord(metadata=ResultRecordMetadata(storage_key=key,
                                                          serializer=PickleSerializer()),
                            result=Payload(str(marker))).serialize()

    with fault_log.trial("e. pickle record"):
        # control: the payload is live where the CLI runs (Prefect's own loader runs it)
        control = tmp_path / "unpickled-by-control"
        (tmp_path / "control.rec").write_bytes(pickle_record(control))
        loader = ("import sys; from prefect._internal.result_records import ResultRecord; "
                  "ResultRecord.deserialize(open(sys.argv[1], 'rb').read())")
        subprocess.run([sys.executable, "-c", loader, str(tmp_path / "control.rec")],
                       env=cli.env, capture_output=True, timeout=120)
        assert control.exists(), "the payload does not run when unpickled: probe is void"

        marker = tmp_path / "unpickled-by-run"
        (root / "prefect" / key).write_bytes(pickle_record(marker))
        before = cli.verify(warm_store)
        assert before.returncode == 1 and key[:16] in before.stdout, before.stdout
        assert "pickle" in before.stdout, before.stdout

        done = cli.run(doc, warm_store)
        assert not marker.exists(), "a record from the store was unpickled"
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        same_keys(summary, doc)
        assert summary["metrics"] == ref["metrics"]
        assert statuses(summary) == dict.fromkeys(STAGES, "cached")  # served from the manifest
        record = (root / "prefect" / key).read_bytes()
        assert json.loads(record)["metadata"]["serializer"]["type"] == "json"
        check_record(record, key)
        assert unclean(warm_store) == {}
