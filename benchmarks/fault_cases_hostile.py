"""The fault matrix's hostile categories: special files, outputs under /proc, huge sizes,
concurrent writers, and "one line, always" (argparse, seeds, empty lists, corrupt rows).

Used by ``benchmarks/fault_matrix.py``; ``fault_runner.py`` runs and judges the cases. Special files are nodes this module makes in its own
work folder (``mknod`` of the null and full devices and of an absent block device, a FIFO, a
socket) — never the machine's ``/dev`` entries — so a version that replaces them destroys
nothing. Huge sizes and concurrent writers run in child processes (a version without the
checks would exhaust memory or run for days: the child has an address-space limit and a
timeout); the others run in this process.

A case is handled when:

* refusals: exit code 1 or 2 (the one a case names, if it names one), exactly one
  ``crbnet: error`` line and no library warning before it, no ``usage:`` block, no traceback, nothing left behind, the special file unchanged (same
  type, device numbers and inode);
* streams: exit code 0, the special file unchanged, the bytes arrived (FIFO, descriptor);
* huge sizes: a refusal within 5 s of the command's start (imports excluded) whose process
  stayed under 1.5 GB resident;
* concurrent writers: the second run is refused (exit 1, one line naming the holder) while the
  first finishes with exit code 0 and its output complete; after ``kill -9`` of a writer, the
  next run on the same output succeeds (no stale lock).
"""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path
from typing import Callable

from fault_runner import Case, Specials, argv_with, run_in_process, run_isolated

T2 = ["--model", "t2_decay"]


# ------------------------------------------------------------------------------------------
# Cases


def build(f: dict[str, Path], w: Path, run_cli: Callable, specials: Specials) -> list[Case]:
    """Every hostile case for every command it applies to."""
    out: list[Case] = []
    o = w / "outs"
    ck = str(f["ckpt"])
    tiny = ["--config", str(f["tiny"]), "--no-progress"]
    file_cmds = {
        "simulate": ["simulate", *T2, "--out", "OUT"],
        "fit": ["fit", "--method", "nlls", *T2, "--input", str(f["sig"]), "--out", "OUT"],
        "dataset": ["dataset", *T2, "--n", "50", "--out", "OUT"],
        "basis": ["basis", *T2, "--k", "3", "--n", "64", "--n-check", "0", "--out", "OUT"],
    }
    folder_cmds = {
        "phantom": ["phantom", *T2, "--shape", "8x8", "--snr", "50", "--out", "OUT"],
        "apply": ["apply", "--method", "nlls", *T2, "--input", str(f["signal"]), "--out", "OUT"],
        "train": ["train", *T2, *tiny, "--out", "OUT"],
        "evaluate": ["evaluate", "--checkpoint", ck, "--grid", "3", "--realizations", "4",
                     "--out", "OUT"],
        "compare": ["compare", ck, "--voxels", "64", "--out", "OUT"],
        "design": ["design", "--model", "mt_hybrid_state", "--control-points", "4", "--starts",
                   "1", "--max-iterations", "1", "--tissue", "WM", "--out", "OUT"],
        "demo": ["demo", "--minutes-per-net", "0.01", "--no-progress", "--out", "OUT"],
    }

    # ---- special files
    if specials.can_mknod:
        file_kinds = [("null", "stream", (0,)), ("full", "refuse", (1,)),
                      ("block", "refuse", (1,))]
    else:
        file_kinds = []
    file_kinds += [("fifo", "refuse", (1,)), ("fifo_reader", "stream", (0,)),
                   ("socket", "refuse", (1,)), ("descriptor", "stream", (0,))]
    for cmd, argv in file_cmds.items():
        for kind, expect, codes in file_kinds:
            out.append(Case(cmd, "special files", f"--out is {kind.replace('_', ' + ')}", argv,
                            specials.folder, expect, codes, special=kind))
    folder_kinds = (["null"] if specials.can_mknod else []) + ["fifo", "socket"]
    for cmd, argv in folder_cmds.items():
        for kind in folder_kinds:
            out.append(Case(cmd, "special files", f"--out folder is a {kind}", argv,
                            specials.folder, "refuse", (1,), special=kind))

    # ---- outputs under /proc (an output that cannot be written: exit 1)
    for cmd, argv in {**file_cmds, **folder_cmds}.items():
        name = "x.npy" if cmd in ("simulate", "fit", "basis") else "x.h5" if cmd == "dataset" \
            else "x"
        out.append(Case(cmd, "outputs under /proc", "--out under /proc",
                        argv_with(argv, "OUT", f"/proc/crbnet-fault/{name}"), w, codes=(1,)))

    # ---- huge sizes: refused at once, nothing large allocated
    huge = [
        ("dataset", "--n 10^15", ["dataset", *T2, "--n", str(10 ** 15), "--out", str(o / "d.h5")]),
        ("train", "--batch-size 10^9", ["train", *T2, *tiny, "--batch-size", str(10 ** 9),
                                        "--out", str(o / "r")]),
        ("train", "net.width = 10^8 (config)", ["train", *T2, "--config", str(f["cfg_wide"]),
                                                "--no-progress", "--out", str(o / "r")]),
        ("train", "--set net.depth=10^7", ["train", *T2, *tiny, "--set", "net.depth=10000000",
                                           "--out", str(o / "r")]),
        ("train", "--set data.pool_size=10^12", ["train", *T2, *tiny, "--set",
                                                 "data.pool_size=1000000000000", "--out",
                                                 str(o / "r")]),
        ("evaluate", "--grid 10^5 x --realizations 10^5",
         ["evaluate", "--method", "nlls", *T2, "--grid", "100000", "--realizations", "100000",
          "--out", str(o / "e")]),
        ("evaluate", "--samples 10^12", ["evaluate", "--checkpoint", ck, "--samples",
                                         str(10 ** 12), "--realizations", "2", "--out",
                                         str(o / "e")]),
        ("evaluate", "--points WM x --realizations 10^12",
         ["evaluate", "--checkpoint", ck, "--points", str(f["points_csv"]), "--realizations",
          str(10 ** 12), "--out", str(o / "e")]),
        ("compare", "--voxels 10^12", ["compare", ck, "--voxels", str(10 ** 12), "--out",
                                       str(o / "c")]),
        ("phantom", "--shape 100000x100000", ["phantom", *T2, "--shape", "100000x100000",
                                              "--snr", "50", "--out", str(o / "p")]),
        ("fit", "dictionary of 10^13 atoms", ["fit", "--method", "dictionary", *T2, "--option",
                                              "n_points=10000000000000", "--input",
                                              str(f["sig"]), "--out", str(o / "e.npy")]),
        ("apply", "dictionary of 10^13 atoms", ["apply", "--method", "dictionary", *T2,
                                                "--option", "n_points=10000000000000",
                                                "--input", str(f["signal"]), "--out",
                                                str(o / "m")]),
        ("basis", "--n 10^11", ["basis", *T2, "--k", "3", "--n", str(10 ** 11), "--out",
                                str(o / "b.npy")]),
    ]
    for cmd, what, argv in huge:
        out.append(Case(cmd, "huge sizes", what, argv, o, codes=(2,), isolated=True))

    # ---- concurrent writers: the second is refused, the first completes
    slow = {
        "dataset": ["dataset", *T2, "--n", "30000", "--storage", "signals", "--out",
                    str(o / "cd.h5")],
        "train": ["train", *T2, *tiny, "--epochs", "6", "--out", str(o / "cr")],
        "phantom": ["phantom", *T2, "--shape", "96x96x8", "--snr", "50", "--out",
                    str(o / "cp")],
        "apply": ["apply", "--method", "nlls", *T2, "--input", str(f["signal"]), "--out",
                  str(o / "ca")],
        "evaluate": ["evaluate", "--method", "nlls", *T2, "--grid", "12", "--realizations", "50",
                     "--out", str(o / "ce")],
        "compare": ["compare", ck, "nlls", "--voxels", "600", "--out", str(o / "cc")],
        "fit": ["fit", "--method", "nlls", *T2, "--input", str(f["many"]), "--out",
                str(o / "cf.npy")],
        "basis": ["basis", *T2, "--k", "3", "--n", "200000", "--out", str(o / "cb.npy")],
        "design": ["design", "--model", "mt_hybrid_state", "--control-points", "4", "--starts",
                   "1", "--max-iterations", "3", "--tissue", "WM", "--out", str(o / "cg")],
        "demo": ["demo", "--minutes-per-net", "0.05", "--no-progress", "--out", str(o / "cm")],
    }
    for cmd, argv in slow.items():
        output = Path(argv[argv.index("--out") + 1])
        out.append(Case(cmd, "concurrent writers", "second run on the same output", argv, o,
                        codes=(1,), isolated=True, first=argv, output=output))
    resume = ["train", *T2, *tiny, "--epochs", "8", "--resume", "--out", str(o / "cr2")]
    out.append(Case("train", "concurrent writers", "second --resume of a running run", resume,
                    o, codes=(1,), isolated=True, first=resume, output=o / "cr2"))
    for cmd in ("train", "phantom"):
        argv = slow[cmd] + (["--resume"] if cmd == "train" else [])
        out.append(Case(cmd, "concurrent writers", "next run after kill -9 of a writer", argv,
                        o, expect="after_kill", codes=(0,), isolated=True, first=argv,
                        output=Path(argv[argv.index("--out") + 1]), kill_first=True))

    # ---- one line, always
    for cmd in ("demo", "models", "simulate", "crb", "design", "dataset", "train", "fit",
                "evaluate", "compare", "phantom", "apply", "basis"):
        out.append(Case(cmd, "one line", "argparse error (unknown flag)",
                        [cmd, "--no-such-flag"], w, codes=(2,)))
    seeded = {"basis": file_cmds["basis"], "compare": folder_cmds["compare"],
              "dataset": file_cmds["dataset"], "demo": folder_cmds["demo"],
              "design": folder_cmds["design"], "evaluate": folder_cmds["evaluate"],
              "phantom": folder_cmds["phantom"], "train": folder_cmds["train"]}
    for cmd, argv in seeded.items():
        out.append(Case(cmd, "one line", "--seed -1",
                        argv_with(argv, "OUT", str(o / ("s.npy" if cmd == "basis" else "s")))
                        + ["--seed", "-1"], o, codes=(2,)))
    times_cmds = {"simulate": file_cmds["simulate"], "fit": file_cmds["fit"],
                  "dataset": file_cmds["dataset"], "basis": file_cmds["basis"],
                  "phantom": folder_cmds["phantom"], "train": folder_cmds["train"],
                  "crb": ["crb", *T2, "--param", "T2=0.05"]}
    for cmd, argv in times_cmds.items():
        out.append(Case(cmd, "one line", '--times ""',
                        argv_with(argv, "OUT", str(o / "t.npy")) + ["--times", ""], o,
                        codes=(2,)))
    out += [
        Case("train", "one line", "NaN inside the training dataset",
             ["train", *T2, "--dataset", str(f["ds_nan"]), "--batch-size", "32", "--epochs",
              "1", "--set", "data.val_size=64", "--no-progress", "--out", str(o / "r")], o,
             codes=(2,)),
        Case("apply", "one line", "NIfTI header dim[0] = 9",
             ["apply", "--method", "nlls", *T2, "--input", str(f["dim9"]), "--out",
              str(o / "m")], o, codes=(2,)),
        Case("compare", "one line", "a pickled object as checkpoint",
             ["compare", str(f["pickled"]), *T2, "--out", str(o / "c")], o, codes=(2,)),
        Case("train", "one line", "config epochs = -1 overridden by --epochs",
             ["train", *T2, "--config", str(f["cfg_epochs_neg"]), "--epochs", "1",
              "--no-progress", "--out", str(o / "r")], o, codes=(2,)),
        Case("dataset", "one line", "config [optim] lr = -1 (unused table)",
             ["dataset", *T2, "--n", "20", "--config", str(f["cfg_lr_neg"]), "--out",
              str(o / "d.h5")], o, codes=(2,)),
        Case("evaluate", "one line", '--grid-parameters ""',
             ["evaluate", "--checkpoint", ck, "--grid-parameters", "", "--out", str(o / "e")],
             o, codes=(2,)),
    ]
    return out


def extra_fixtures(f: dict[str, Path], w: Path) -> None:
    """Inputs of the hostile cases (beside the fault matrix's own fixtures)."""
    import h5py
    import numpy as np
    import shutil

    (w / "wide.toml").write_text("[net]\nwidth = 100000000\ndepth = 2\n")
    f["cfg_wide"] = w / "wide.toml"
    (w / "epochs_neg.toml").write_text("[optim]\nepochs = -1\n[net]\nwidth = 16\ndepth = 1\n")
    f["cfg_epochs_neg"] = w / "epochs_neg.toml"
    (w / "lr_neg.toml").write_text("[optim]\nlr = -1.0\n")
    f["cfg_lr_neg"] = w / "lr_neg.toml"
    (w / "points.csv").write_text("name,T2\nWM,0.07\n")
    f["points_csv"] = w / "points.csv"
    f["ds_nan"] = w / "ds_nan.h5"
    shutil.copy(f["ds"], f["ds_nan"])
    with h5py.File(f["ds_nan"], "r+") as h:
        storage = h.attrs["storage"]
        storage = storage.decode() if isinstance(storage, bytes) else storage
        row = h[storage][3]
        row[0] = np.nan
        h[storage][3] = row
    raw = bytearray(__import__("gzip").open(f["signal"]).read())
    raw[40:42] = struct.pack("<h", 9)
    (w / "dim9").mkdir(exist_ok=True)
    f["dim9"] = w / "dim9" / "signal.nii"
    f["dim9"].write_bytes(bytes(raw))
    shutil.copy(w / "ph" / "signal.json", w / "dim9" / "signal.json")
    import pickle

    f["pickled"] = w / "pickled.pt"
    f["pickled"].write_bytes(pickle.dumps({"network": {"weights": [1.0, 2.0]},
                                           "note": io.StringIO}))
    signals = np.load(f["sig"])
    f["many"] = w / "many.npy"
    np.save(f["many"], np.repeat(signals, 3000, axis=0))


# ------------------------------------------------------------------------------------------
# Running


def run_all(f: dict[str, Path], w: Path, run_cli: Callable, skip: set[str],
            say: Callable[[str], None]) -> list[dict]:
    """Run every hostile case; rows as the fault matrix writes them."""
    extra_fixtures(f, w)
    specials = Specials(w / "specials")
    tmp = w / "children"
    tmp.mkdir(exist_ok=True)
    rows = []
    for case in build(f, w, run_cli, specials):
        if case.command in skip or case.what in skip or case.category in skip:
            continue
        t0 = time.perf_counter()
        if case.isolated:
            ok, note = run_isolated(case, tmp)
        else:
            ok, note = run_in_process(case, run_cli, specials)
        rows.append({"command": case.command, "category": case.category, "case": case.what,
                     "handled": ok, "note": note, "seconds": time.perf_counter() - t0})
        say(f"{'ok ' if ok else 'BAD'} {case.command:<9} {case.category:<20} {case.what:<36} "
            f"{note}")
        for p in (w / "outs").iterdir():
            import shutil

            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return rows


__all__ = ["run_all", "build", "extra_fixtures"]
