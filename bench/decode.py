"""Decoding speed: sentences/s and tokens/s for a checkpoint, a test file, a beam size, a batch
size and a device.

Two figures: "whole process" runs ``python -m nmt_cli translate`` as a fresh process and times it
from start to exit (interpreter start, imports and model load included), the way a user meets it;
"decode only" loads the model here and times translation alone, after one warm-up batch.

    python bench/decode.py -m runs/m30k/checkpoints/best.pt -i test.de --beam-size 5 \\
        --batch-size 64 --device cpu [--threads 2] [--output hyp.txt] \\
        [--precision fp32 auto] [--reference test.en] [--batch-1-check]

With several ``--precision`` values each is measured in turn in the same run (decode only, then
the whole process), so a change of the machine's load hits them alike; ``--reference`` adds the
BLEU of each output, ``--batch-1-check`` translates once more at batch size 1 and says whether
every line is identical to the batched output. The load average is printed with every figure.

tokens/s counts target subwords (EOS excluded) of the translations. Each line also gives the CPU
time used, a steadier figure than wall time on a machine shared with other work.

``-m`` may also be a folder written by ``nmt export`` (CTranslate2). With ``--ct2 DIR...``, one
run compares whole processes side by side: nmt's own decoding of ``-m`` and each exported model,
at every ``--beam-sizes`` value, in turn, with the speed-up over nmt, the share of lines
identical to nmt's output and, with ``-r``, BLEU:

    python bench/decode.py -m best.pt --ct2 m-int8 m-float32 -i test.de -r test.en \
        --beam-sizes 5 1 --threads 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _abs(path: Path) -> str:
    return str(Path(path).resolve())


def whole_process(args, output: Path, model: Path | None = None,
                  beam_size: int | None = None) -> tuple[float, float]:
    # run in this script's tree: `python -m` puts the current folder first on the path, so a
    # child started from inside another checkout would run that checkout's nmt_cli
    cmd = [sys.executable, "-m", "nmt_cli", "translate", "-m", _abs(model or args.model), "-i",
           _abs(args.input), "-o", _abs(output), "--beam-size", str(beam_size or args.beam_size),
           "--batch-size", str(args.batch_size), "--batch-type", args.batch_type, "--device",
           args.device, "-q"]
    if args.precision:
        cmd += ["--precision", args.precision]
    for name in ("max_len_a", "max_len_b"):
        if getattr(args, name) is not None:
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if getattr(args, "inter_threads", None) is not None:
        cmd += ["--inter-threads", str(args.inter_threads)]
    start, before = time.perf_counter(), os.times()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    after = os.times()
    cpu = (after.children_user + after.children_system) - (before.children_user
                                                           + before.children_system)
    return time.perf_counter() - start, cpu


def decode_only(args) -> tuple[float, float, int, int, list[str], str]:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as nmt translate does
    sys.path.insert(0, str(ROOT))
    from nmt_cli.decoding.engine import EngineSettings, open_engine
    from nmt_cli.text.bitext import read_lines

    settings = {"beam_size": args.beam_size, "batch_size": args.batch_size,
                "batch_type": args.batch_type}
    if args.precision:
        settings["precision"] = args.precision
    settings.update({name: getattr(args, name) for name in ("max_len_a", "max_len_b")
                     if getattr(args, name) is not None})
    lines = list(read_lines(args.input))
    engine = open_engine([args.model], EngineSettings(args.device, args.threads or 0,
                                                      args.inter_threads or 0, settings))
    try:
        cfg = engine.defaults
        engine.translate_lines(lines[:64], cfg)  # warm-up
        _synchronize(engine)
        start, cpu_start = time.perf_counter(), time.process_time()
        found = engine.translate_lines(lines, cfg)
        _synchronize(engine)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        engine.close()
    tokens = sum(len(t.hypotheses[0].tokens) for t in found if t.hypotheses)
    workers = getattr(engine, "workers", None)
    label = engine.precision + (f", {workers} worker(s)" if workers else "")
    return seconds, cpu, len(lines), tokens, [t.text for t in found], label


def _synchronize(engine) -> None:
    if engine.device.startswith("cuda") and "ctranslate2" not in engine.precision:
        import torch

        torch.cuda.synchronize()


def compare(args) -> None:
    """Whole processes side by side: nmt on -m, then each --ct2 model, per beam size."""
    import sacrebleu

    refs = args.reference.read_text(encoding="utf-8").split("\n")[:-1] if args.reference \
        else None
    models = [("nmt fp32", args.model)] + [(f"ct2 {ct2_label(d)}", d) for d in args.ct2]
    with tempfile.TemporaryDirectory() as tmp:
        for beam in args.beam_sizes:
            base_speed, base_text = None, None
            for label, model in models:
                out = Path(tmp) / f"{label.replace(' ', '-')}-beam{beam}.txt"
                wall, cpu = whole_process(args, out, model, beam)
                text = out.read_text(encoding="utf-8").split("\n")[:-1]
                speed = len(text) / wall
                line = (f"beam {beam:<2} {label:<18} {len(text)} sentences in {wall:6.2f} s: "
                        f"{speed:6.1f} sentences/s (CPU time {cpu:.2f} s)")
                if base_speed is None:
                    base_speed, base_text = speed, text
                else:
                    same = sum(a == b for a, b in zip(text, base_text)) / max(1, len(text))
                    line += f"  x{speed / base_speed:.2f} nmt, {100 * same:.1f}% lines = nmt"
                if refs is not None:
                    line += f"  BLEU {sacrebleu.corpus_bleu(text, [refs]).score:.2f}"
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    (args.keep / out.name).write_text("\n".join(text) + "\n", encoding="utf-8")
                print(line, flush=True)


def ct2_label(folder: Path) -> str:
    import json

    meta = json.loads((folder / "nmt-export.json").read_text(encoding="utf-8"))
    return meta["quantization"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("-i", "--input", type=Path, required=True)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batch-type", choices=["sentences", "tokens"], default="sentences")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads in all, as nmt translate --threads; 0: one per core")
    parser.add_argument("--inter-threads", type=int, nargs="+", default=[None],
                        help="nmt translate --inter-threads values to compare in turns "
                             "(batches side by side; default: translate's own)")
    parser.add_argument("--max-len-a", type=float, default=None)
    parser.add_argument("--max-len-b", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None, help="Keep the translations here.")
    parser.add_argument("--skip-process", action="store_true", help="Only the decode-only run.")
    parser.add_argument("--precision", nargs="+", default=[None],
                        help="decode.precision values to compare (default: the checkpoint's)")
    parser.add_argument("-r", "--reference", type=Path, default=None, help="Score each output (BLEU).")
    parser.add_argument("--batch-1-check", action="store_true",
                        help="Also translate at batch size 1 and compare every line.")
    parser.add_argument("--ct2", type=Path, nargs="+", default=[],
                        help="Exported models to compare with -m, whole process, side by side.")
    parser.add_argument("--beam-sizes", type=int, nargs="+", default=[5, 1],
                        help="With --ct2: the beam sizes to compare (1 is greedy).")
    parser.add_argument("--keep", type=Path, default=None,
                        help="With --ct2: keep every translation in this folder.")
    args = parser.parse_args()
    if args.ct2:
        compare(argparse.Namespace(**{**vars(args), "precision": None,
                                      "inter_threads": args.inter_threads[0]}))
        return
    for precision in args.precision:
        for inter in args.inter_threads:
            run_one(argparse.Namespace(**{**vars(args), "precision": precision,
                                          "inter_threads": inter}))


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_one(args) -> None:
    seconds, cpu, sentences, tokens, texts, resolved = decode_only(args)
    setting = (f"beam {args.beam_size}, batch {args.batch_size} {args.batch_type}, "
               f"{args.device}, precision {args.precision or 'of the checkpoint'} -> {resolved}"
               f"{f', {args.threads} threads' if args.threads else ''}")
    print(f"decode only   ({setting}): {sentences} sentences, {tokens} tokens in {seconds:.2f} s: "
          f"{sentences / seconds:.1f} sentences/s, {tokens / seconds:.1f} tokens/s "
          f"(CPU time {cpu:.2f} s; {_load()})", flush=True)
    if args.skip_process:
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output or Path(tmp) / "hyp.txt"
        if args.output and len(args.precision) * len(args.inter_threads) > 1:  # one per setting
            out = args.output.with_name(f"{args.output.stem}.{args.precision}"
                                        f".{args.inter_threads}{args.output.suffix}")
        wall, cpu = whole_process(args, out)
        produced = out.read_text(encoding="utf-8").split("\n")[:-1]
        same = produced == texts
        print(f"whole process ({setting}): {sentences} sentences, {tokens} tokens in {wall:.2f} s: "
              f"{sentences / wall:.1f} sentences/s, {tokens / wall:.1f} tokens/s"
              f" (CPU time {cpu:.2f} s; {_load()})"
              f"{'' if same else '  (warning: output differs from the decode-only run)'}",
              flush=True)
        if args.reference is not None:
            from nmt_cli.scoring import score_files

            bleu = score_files(out, [args.reference], ["bleu"])[0]
            print(f"  {bleu.text}", flush=True)
        if args.batch_1_check:
            one = Path(tmp) / "batch1.txt"
            whole_process(argparse.Namespace(**{**vars(args), "batch_size": 1,
                                                "batch_type": "sentences"}), one)
            alone = one.read_text(encoding="utf-8").split("\n")[:-1]
            differ = sum(a != b for a, b in zip(alone, produced)) + abs(len(alone) - len(produced))
            print(f"  batch 1 vs batch {args.batch_size}: {differ} of {sentences} lines differ",
                  flush=True)


if __name__ == "__main__":
    main()
