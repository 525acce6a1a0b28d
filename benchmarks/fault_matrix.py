"""Fault matrix: run the CLI on many bad inputs and environment faults; count what is handled.

A case is *handled* when the command

* returns exit code 1 or 2 (never 0, never an escaped exception),
* prints exactly one ``crbnet: error: ...`` line on stderr and no traceback (``internal
  error`` lines count as not handled: they mean a bug was hit),
* leaves nothing behind: no new entry in the folder the output would go to (no half-written
  file, no temporary file, no empty folder).

Cases: wrong output locations (a folder where a file goes, a file where a folder goes, a
read-only folder, a full disk — the last two need root for a tmpfs mount and are skipped
otherwise), wrongly typed configuration values (``--set``, TOML, ``--lr inf``), text inputs that
are not UTF-8, corrupt compressed NIfTI, malformed HDF5 dataset attributes, non-numeric .npy;
and the hostile categories of ``fault_cases_hostile.py`` (special files, outputs under /proc,
huge sizes, concurrent writers, one line always), each for every command it applies to. The
table counts cases per category and command.

Commands run in this process through :func:`crbnet.cli.app.main` (the one error boundary), with a
tiny trained network, phantom and dataset made first. Writes benchmarks/results/fault_matrix.json
and .png (cases tried/handled per command).

Run: ``PYTHONPATH=src python benchmarks/fault_matrix.py [--keep DIR] [--skip CMD|CASE|CATEGORY]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np

import fault_cases_hostile as hostile

from crbnet.cli.app import main

RESULTS = Path(__file__).resolve().parent / "results"
# A tiny training run (seconds). Given as a config file, so that the --set values a case tries
# are not overridden by command-line flags.
TINY_CONFIG = """
[optim]
epochs = 1
[data]
batch_size = 32
batches_per_epoch = 2
val_size = 64
[subspace]
n_fit = 128
n_check = 0
"""
TINY_NET = "[net]\nwidth = 16\ndepth = 1\n"
T2 = ["--model", "t2_decay"]


def run_cli(argv: list[str]) -> tuple[int | str, str]:
    """(exit code or 'exception: ...', stderr) of one in-process CLI call."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc: int | str = main(argv)
        except SystemExit as exc:  # argparse
            rc = int(exc.code or 0)
        except BaseException as exc:  # noqa: BLE001 - an escaped exception is the finding
            rc = f"exception: {type(exc).__name__}: {exc}"
    return rc, err.getvalue()


def snapshot(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def judge(rc: int | str, err: str, before: set[str], after: set[str]) -> tuple[bool, str]:
    lines = [ln for ln in err.splitlines()
             if ln.startswith(("crbnet: error", "crbnet: internal error"))]
    if not isinstance(rc, int):
        return False, rc
    if rc == 0:
        return False, "exit 0 (accepted)"
    if rc not in (1, 2):
        return False, f"exit {rc}"
    if "Traceback" in err:
        return False, "traceback"
    if len(lines) != 1 or lines[0].startswith("crbnet: internal"):
        return False, f"{len(lines)} error lines: {lines[:1]}"
    new = after - before
    if new:
        return False, f"left behind: {sorted(new)[:3]}"
    before_error = err[:err.index(lines[0])].splitlines()
    # progress lines may precede a late error; warnings of libraries may not
    foreign = [ln for ln in before_error if "Warning" in ln or "warn(" in ln]
    if foreign or "usage:" in err:
        return False, f"a foreign line precedes the error: {(foreign or ['usage'])[0][:80]}"
    return True, lines[0][len("crbnet: error: "):][:110]


class Mounts:
    """A read-only and a full tmpfs (root only); unmounted at exit."""

    def __init__(self, base: Path) -> None:
        self.ro, self.full = base / "readonly", base / "full"
        self.ok = False
        if os.geteuid() != 0 or sys.platform != "linux":
            return
        try:
            for m in (self.ro, self.full):
                m.mkdir()
                subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(m)],
                               check=True, capture_output=True)
            subprocess.run(["mount", "-o", "remount,ro", str(self.ro)], check=True,
                           capture_output=True)
            fill_disk(self.full)
            self.ok = True
        except (OSError, subprocess.CalledProcessError):
            self.close()

    def close(self) -> None:
        for m in (self.ro, self.full):
            subprocess.run(["umount", str(m)], capture_output=True)


def fill_disk(folder: Path) -> None:
    """Write a file in ``folder`` until its file system is full (tmpfs counts whole pages)."""
    subprocess.run(["dd", "if=/dev/zero", f"of={folder / 'filler'}", "bs=4096"],
                   capture_output=True)


def build_fixtures(w: Path) -> dict[str, Path]:
    f: dict[str, Path] = {}
    (w / "tiny.toml").write_text(TINY_CONFIG + TINY_NET)
    f["tiny"] = w / "tiny.toml"
    assert main(["train", *T2, "--config", str(f["tiny"]), "--no-progress", "--out",
                 str(w / "run")]) == 0
    f["ckpt"] = w / "run" / "checkpoint.pt"
    assert main(["phantom", *T2, "--shape", "12x12", "--snr", "50", "--out",
                 str(w / "ph")]) == 0
    f["signal"], f["mask"] = w / "ph" / "signal.nii.gz", w / "ph" / "mask.nii.gz"
    # 64 bytes flipped in the middle of the compressed stream: gzip's CRC check fails.
    raw = bytearray(f["signal"].read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    (w / "bad").mkdir()
    f["corrupt"] = w / "bad" / "signal.nii.gz"
    f["corrupt"].write_bytes(bytes(raw))
    shutil.copy(w / "ph" / "signal.json", w / "bad" / "signal.json")
    good = f["signal"].read_bytes()
    f["truncated"] = w / "bad" / "trunc.nii.gz"
    f["truncated"].write_bytes(good[: len(good) * 2 // 3])
    f["badsidecar"] = w / "bad2" / "signal.nii.gz"
    f["badsidecar"].parent.mkdir()
    shutil.copy(f["signal"], f["badsidecar"])
    (w / "bad2" / "signal.json").write_bytes(b'{"Model": "t2_decay\xff\xfe"}')
    f["badmask"] = w / "bad" / "mask.nii.gz"
    m = bytearray(f["mask"].read_bytes())
    m[len(m) // 2] ^= 0xFF
    f["badmask"].write_bytes(bytes(m))
    assert main(["simulate", *T2, "--out", str(w / "sig.npy")]) == 0
    f["sig"] = w / "sig.npy"
    np.save(w / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    f["strings"] = w / "strings.npy"
    np.save(w / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    f["objects"] = w / "objects.npy"
    np.save(w / "records.npy", np.zeros(3, dtype=[("a", "f8"), ("b", "f8")]))
    f["records"] = w / "records.npy"
    assert main(["dataset", *T2, "--n", "200", "--out", str(w / "ds.h5")]) == 0
    f["ds"] = w / "ds.h5"
    for name, change in {
        "ds_nostorage": lambda a: a.__delitem__("storage"),
        "ds_storage5": lambda a: a.__setitem__("storage", 5),
        "ds_storageX": lambda a: a.__setitem__("storage", "weird"),
        "ds_modeljson": lambda a: a.__setitem__("model", "{not json"),
        "ds_modellist": lambda a: a.__setitem__("model", "[1, 2]"),
        "ds_modelkeys": lambda a: a.__setitem__("model", json.dumps({"name": "t2_decay"})),
        "ds_nomodel": lambda a: a.__delitem__("model"),
        "ds_sampling": lambda a: a.__setitem__("sampling", "nope"),
        "ds_seed": lambda a: a.__setitem__("seed", "zero"),
    }.items():
        path = w / f"{name}.h5"
        shutil.copy(f["ds"], path)
        with h5py.File(path, "r+") as h:
            change(h.attrs)
        f[name] = path
    (w / "latin1.json").write_bytes('{"times": [0.01, 0.02], "note": "é"}'.encode("latin-1"))
    f["seq_latin1"] = w / "latin1.json"
    (w / "latin1.csv").write_bytes("label,T2f\nmatière blanche,0.05\n".encode("latin-1"))
    f["points_latin1"] = w / "latin1.csv"
    (w / "latin1.toml").write_bytes('# réglage\n[optim]\nepochs = 1\n'.encode("latin-1"))
    f["cfg_latin1"] = w / "latin1.toml"
    for name, text in {"cfg_fixed5": "[model]\nfixed = 5\n",
                       "cfg_widthstr": '[net]\nwidth = "wide"\n',
                       "cfg_lrlist": "[optim]\nlr = [1, 2]\n",
                       "cfg_lrinf": "[optim]\nlr = inf\n",
                       "cfg_seedstr": 'seed = "x"\n',
                       "cfg_net5": "net = 5\n",
                       "cfg_sampling5": "sampling = 5\n",
                       "cfg_samplingT2": "[sampling]\nT2 = 5\n",
                       "cfg_free": '[model]\nfree = "B1"\n',
                       "cfg_times": '[model]\ntimes = ["a"]\n',
                       "cfg_bool": "[subspace]\nenabled = 3\n",
                       "cfg_model5": "model = 5\n"}.items():
        (w / f"{name}.toml").write_text(text + ("" if "net" in text else TINY_NET))
        f[name] = w / f"{name}.toml"
    (w / "adir").mkdir()
    (w / "adir" / "keep").write_text("x")
    (w / "afile").write_text("x")
    f["adir"], f["afile"] = w / "adir", w / "afile"
    return f


def cases(f: dict[str, Path], w: Path, mounts: Mounts) -> list[tuple[str, str, list[str], Path]]:
    """(command, what, argv, folder that must not change)."""
    out: list[tuple[str, str, list[str], Path]] = []
    ro, full = mounts.ro, mounts.full
    env = mounts.ok

    def add(cmd: str, what: str, argv: list[str], watch: Path, needs_mount: bool = False
            ) -> None:
        if needs_mount and not env:
            return
        out.append((cmd, what, argv, watch))

    o = w / "outs"
    ph = ["phantom", *T2, "--shape", "12x12", "--snr", "50"]
    ap = ["apply", "--method", "nlls", *T2]
    apck = ["apply", "--checkpoint", str(f["ckpt"])]
    tr = ["train", *T2, "--config", str(f["tiny"]), "--no-progress"]
    tr_cfg = ["train", *T2, "--no-progress", "--epochs", "1", "--batch-size", "32", "--set",
              "data.batches_per_epoch=2", "--set", "data.val_size=64", "--set",
              "subspace.n_fit=128", "--set", "subspace.n_check=0"]
    ev = ["evaluate", "--checkpoint", str(f["ckpt"]), "--grid", "3", "--realizations", "4"]
    cp = ["compare", str(f["ckpt"]), "--voxels", "64"]
    fit = ["fit", "--method", "dictionary", *T2, "--input", str(f["sig"])]
    ds = ["dataset", *T2, "--n", "50"]
    sim = ["simulate", *T2]
    design = ["design", "--model", "mt_hybrid_state", "--control-points", "4", "--starts", "1",
              "--max-iterations", "1", "--tissue", "WM"]

    # ---- output locations
    for cmd, argv, kind in (("simulate", sim, "file"), ("fit", fit, "file"),
                            ("dataset", ds, "file"), ("phantom", ph, "dir"),
                            ("apply", ap + ["--input", str(f["signal"]), "--mask",
                                            str(f["mask"])], "dir"),
                            ("train", tr, "dir"), ("evaluate", ev, "dir"),
                            ("compare", cp, "dir"), ("demo", ["demo"], "dir"),
                            ("design", design, "dir")):
        name = "x.npy" if cmd in ("simulate", "fit") else "x.h5" if cmd == "dataset" else "x"
        if kind == "file":
            add(cmd, "output is an existing folder", argv + ["--out", str(f["adir"])], f["adir"])
        else:
            add(cmd, "output is an existing file", argv + ["--out", str(f["afile"])], w)
        add(cmd, "output under a file", argv + ["--out", str(f["afile"] / name)], w)
        add(cmd, "read-only folder", argv + ["--out", str(ro / name)], ro, True)
        add(cmd, "disk full", argv + ["--out", str(full / name)], full, True)
        add(cmd, "new subfolder on a full disk", argv + ["--out", str(full / "sub" / name)],
            full, True)
    add("fit", "--m0-out is a folder", fit + ["--out", str(o / "est.npy"), "--m0-out",
                                              str(f["adir"])], o)
    add("fit", "--m0-out on a full disk", fit + ["--out", str(o / "est.npy"), "--m0-out",
                                                 str(full / "m0.npy")], o, True)
    add("fit", "--m0-out equals --out", fit + ["--out", str(o / "e.npy"), "--m0-out",
                                               str(o / "e.npy")], o)

    # ---- configuration values of the wrong type
    for what, extra in (("--set optim.epochs=abc", ["--set", "optim.epochs=abc"]),
                        ('--set net.width="wide"', ["--set", 'net.width="wide"']),
                        ("--set optim.lr=[1,2]", ["--set", "optim.lr=[1,2]"]),
                        ("--lr inf", ["--lr", "inf"]), ("--lr nan", ["--lr", "nan"]),
                        ("--set optim.lr=-inf", ["--set", "optim.lr=-inf"]),
                        ("--set data.snr=abc", ["--set", "data.snr=abc"]),
                        ("--set data.snr=[1,2,3]", ["--set", "data.snr=[1,2,3]"]),
                        ("--set loss.realizations=2.5", ["--set", "loss.realizations=2.5"]),
                        ("--set net.residual=3", ["--set", "net.residual=3"]),
                        ("--set data.m0_magnitude=[1]", ["--set", "data.m0_magnitude=[1]"]),
                        ("--set data.m0_magnitude=x", ["--set", "data.m0_magnitude=x"]),
                        ("--set loss.mse_weights=5", ["--set", "loss.mse_weights=5"]),
                        ("--set data.sampling=5", ["--set", "data.sampling=5"]),
                        ("--set net.width.x=1", ["--set", "net.width.x=1"]),
                        ("--set optim.epochs=true", ["--set", "optim.epochs=true"]),
                        ("--set data.batch_size=1e9", ["--set", "data.batch_size=1e9"]),
                        ("--snr inf", ["--snr", "inf"]),
                        ("--range T2=a:b", ["--range", "T2=a:b"]),
                        ("--max-minutes nan", ["--max-minutes", "nan"])):
        add("train", what, tr + extra + ["--out", str(o / "run")], o)
    for key in ("cfg_fixed5", "cfg_widthstr", "cfg_lrlist", "cfg_lrinf", "cfg_seedstr",
                "cfg_net5", "cfg_sampling5", "cfg_samplingT2", "cfg_free", "cfg_times",
                "cfg_bool", "cfg_model5", "cfg_latin1"):
        add("train", f"config {key[4:]}", tr_cfg + ["--config", str(f[key]), "--out",
                                                 str(o / "run")], o)
    add("dataset", "config model.fixed=5", ds + ["--config", str(f["cfg_fixed5"]), "--out",
                                                  str(o / "d.h5")], o)
    add("dataset", "config not UTF-8", ds + ["--config", str(f["cfg_latin1"]), "--out",
                                              str(o / "d.h5")], o)

    # ---- text that is not UTF-8
    add("simulate", "sequence JSON not UTF-8", ["simulate", *T2, "--sequence",
                                                str(f["seq_latin1"]), "--out",
                                                str(o / "s.npy")], o)
    add("crb", "sequence JSON not UTF-8", ["crb", *T2, "--sequence", str(f["seq_latin1"]),
                                           "--param", "T2=0.05"], o)
    add("phantom", "sequence JSON not UTF-8", ph + ["--sequence", str(f["seq_latin1"]),
                                                    "--out", str(o / "p")], o)
    add("design", "--start JSON not UTF-8", design + ["--start", str(f["seq_latin1"]), "--out",
                                                      str(o / "d")], o)
    add("design", "--points CSV not UTF-8", design + ["--points", str(f["points_latin1"]),
                                                      "--out", str(o / "d")], o)
    add("apply", "NIfTI sidecar not UTF-8", ap + ["--input", str(f["badsidecar"]), "--out",
                                                  str(o / "m")], o)

    # ---- corrupt or malformed data
    add("apply", "corrupt .nii.gz, no mask", ap + ["--input", str(f["corrupt"]), "--out",
                                                   str(o / "m")], o)
    add("apply", "corrupt .nii.gz with mask", ap + ["--input", str(f["corrupt"]), "--mask",
                                                    str(f["mask"]), "--out", str(o / "m")], o)
    add("apply", "corrupt .nii.gz, network", apck + ["--input", str(f["corrupt"]), "--mask",
                                                     str(f["mask"]), "--out", str(o / "m")], o)
    add("apply", "truncated .nii.gz", ap + ["--input", str(f["truncated"]), "--out",
                                            str(o / "m")], o)
    add("apply", "corrupt mask .nii.gz", ap + ["--input", str(f["signal"]), "--mask",
                                               str(f["badmask"]), "--out", str(o / "m")], o)
    for what, key in (("strings", "strings"), ("pickled objects", "objects"),
                      ("records", "records")):
        add("fit", f".npy of {what}", ["fit", "--method", "nlls", *T2, "--input", str(f[key]),
                                       "--out", str(o / "e.npy")], o)
    for key in ("ds_nostorage", "ds_storage5", "ds_storageX", "ds_modeljson", "ds_modellist",
                "ds_modelkeys", "ds_nomodel", "ds_sampling", "ds_seed"):
        add("train", f"dataset {key[3:]}", tr + ["--dataset", str(f[key]), "--out",
                                                 str(o / "run")], o)
    return out


def main_matrix(keep: str | None, skip: set[str] = frozenset()) -> dict:
    w = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="crbnet-faults-"))
    w.mkdir(parents=True, exist_ok=True)
    (w / "outs").mkdir(exist_ok=True)
    mounts = Mounts(w)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            fixtures = build_fixtures(w)
        rows = []
        base = "inputs and locations"
        for cmd, what, argv, watch in cases(fixtures, w, mounts):
            if cmd in skip or what in skip or base in skip:
                continue
            before = snapshot(watch)
            rc, err = run_cli(argv)
            ok, note = judge(rc, err, before, snapshot(watch))
            rows.append({"command": cmd, "category": base, "case": what,
                         "exit": rc if isinstance(rc, int) else None, "handled": ok,
                         "note": note})
            print(f"{'ok ' if ok else 'BAD'} {cmd:<9} {what:<34} exit {rc if isinstance(rc, int) else 'exc'}: {note}",
                  flush=True)
            for p in (w / "outs").iterdir():   # a case that failed to fail must not spoil the next
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        rows += hostile.run_all(fixtures, w, run_cli, skip, lambda text: print(text, flush=True))
    finally:
        mounts.close()
        if not keep:
            shutil.rmtree(w, ignore_errors=True)
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"tried": 0, "handled": 0})
    by_category: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: {"tried": 0, "handled": 0}))
    for r in rows:
        for cell in (table[r["command"]], by_category[r["category"]][r["command"]]):
            cell["tried"] += 1
            cell["handled"] += int(r["handled"])
    return {"rows": rows, "by_command": dict(table),
            "by_category": {c: dict(t) for c, t in by_category.items()}, "mounts": mounts.ok,
            "seconds": time.perf_counter() - t0, "loadavg": os.getloadavg()}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmds = sorted(result["by_command"])
    tried = [result["by_command"][c]["tried"] for c in cmds]
    handled = [result["by_command"][c]["handled"] for c in cmds]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(cmds))
    ax.bar(x - 0.2, tried, 0.4, label="tried")
    ax.bar(x + 0.2, handled, 0.4, label="handled (as promised: one line or a stream; nothing left or replaced)")
    ax.set_xticks(x, cmds, rotation=30)
    ax.set_ylabel("cases")
    ax.set_title("crbnet fault matrix")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    parser.add_argument("--skip", default="", metavar="CMD|CASE,...",
                        help="leave these commands or cases out, e.g. demo (on a version that "
                             "finds its faults late, each case trains for minutes) or "
                             "'--set data.batch_size=1e9' (where accepted, it exhausts memory)")
    parser.add_argument("--results", default=str(RESULTS / "fault_matrix"), metavar="PREFIX",
                        help="write PREFIX.json and PREFIX.png")
    args = parser.parse_args()
    result = main_matrix(args.keep, set(filter(None, args.skip.split(","))))
    print(f"\n{'category':<22} {'commands':>8} {'tried':>5} {'handled':>7}")
    for cat, per in result["by_category"].items():
        print(f"{cat:<22} {len(per):>8} {sum(c['tried'] for c in per.values()):>5} "
              f"{sum(c['handled'] for c in per.values()):>7}")
    print(f"\n{'command':<10} {'tried':>5} {'handled':>7}")
    for cmd, c in sorted(result["by_command"].items()):
        print(f"{cmd:<10} {c['tried']:>5} {c['handled']:>7}")
    total = sum(c["tried"] for c in result["by_command"].values())
    ok = sum(c["handled"] for c in result["by_command"].values())
    print(f"{'all':<10} {total:>5} {ok:>7}   ({result['seconds']:.0f} s; read-only/full-disk "
          f"mounts: {'yes' if result['mounts'] else 'no (not root): those cases skipped'})")
    prefix = Path(args.results)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    from crbnet.files import write_json

    write_json(prefix.with_suffix(".json"), result, indent=1)
    plot(result, prefix.with_suffix(".png"))
