"""The training-side commands: tokenizer, preprocess, train, plot and average."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from nmt_cli.cli.app import RECIPE, SET, Device, _load, app, user_errors
from nmt_cli.errors import NmtError
from nmt_cli.reports import (PreprocessProgress, TrainProgress, print_preprocess_summary,
                             print_train_summary, stderr_console)

@app.command()
def tokenizer(recipe: Path = RECIPE, set_: List[str] = SET) -> None:
    """Train SentencePiece subword models on the training bitext.

    One joint model or one per language, on a random sample of the training bitext.
    """
    with user_errors():
        from nmt_cli.text.tokenizer import Tokenizers, dev_statistics, train_tokenizers

        rcp = _load(recipe, set_)
        paths = train_tokenizers(rcp)
        tok = Tokenizers.load(rcp)
        verb = "wrote" if rcp.tokenizer.model is None else "uses (tokenizer.model, not trained)"
        for side in sorted(set(paths.values())):
            print(f"{verb} {side}")
        print(f"vocabulary: {tok.src_vocab_size} source / {tok.tgt_vocab_size} target pieces"
              f"{' (joint)' if tok.joint else ''}")
        where = "dev" if rcp.data.dev is not None else "train"
        for side, st in dev_statistics(rcp, tok).items():
            print(f"{where} {side}: unknown pieces {st['unk_rate']:.3%}, "
                  f"{st['pieces_per_word']:.2f} pieces per word ({st['lines']} lines)")


@app.command()
def preprocess(recipe: Path = RECIPE, set_: List[str] = SET,
               dry_run: bool = typer.Option(False, "--dry-run",
                                            help="Report what the filters would do; write nothing."),
               progress: bool = typer.Option(True, "--progress/--no-progress",
                                             help="Show progress bars with pairs/s.")) -> None:
    """Clean, filter, dedup, encode and binarize the bitext.

    Every split of the recipe is written as token-id shards that training reads.
    """
    with user_errors():
        from nmt_cli.text.preprocess import data_dir, preprocess as run

        rcp = _load(recipe, set_)
        bars = PreprocessProgress() if progress else None
        try:
            manifest = run(rcp, dry_run=dry_run, progress=bars)
        finally:
            if bars is not None:
                bars.stop()
        con = stderr_console()
        print_preprocess_summary(manifest, con)
        if dry_run:
            con.print("dry run: nothing written")
        else:
            print(f"wrote {data_dir(rcp)}")


@app.command()
def train(recipe: Path = RECIPE, set_: List[str] = SET,
          device: Optional[Device] = typer.Option(None, help="Overrides train.device."),
          resume: bool = typer.Option(False, "--resume",
                                      help="Continue the run in the recipe's workdir from its "
                                           "newest checkpoint."),
          overwrite: bool = typer.Option(False, "--overwrite",
                                         help="Delete the run folder's checkpoints and metrics "
                                              "and start afresh."),
          init_from: Optional[Path] = typer.Option(None, "--init-from", metavar="CKPT",
                                                   help="Start from this checkpoint's weights "
                                                        "with a fresh optimizer and schedule "
                                                        "(fine-tuning).")) -> None:
    """Train an attention encoder-decoder model.

    Validates every train.valid_every steps and keeps the last and best checkpoints.

    Under torchrun (--nproc-per-node N) it trains data-parallel on N processes.
    """
    with user_errors():
        from nmt_cli.training.runs import prepare_run
        from nmt_cli.training.trainer import Trainer

        rcp = _load(recipe, set_)
        prepare_run(rcp, resume=resume, overwrite=overwrite, init_from=init_from)
        con = stderr_console()
        trainer = Trainer(rcp, device.value if device else None, console=con, resume=resume,
                          init_from=init_from)
        try:
            summary = trainer.train(TrainProgress() if trainer.dist.is_main else None)
        finally:
            from nmt_cli.training.distributed import teardown

            teardown()
        if not trainer.dist.is_main:
            return
        print_train_summary(summary, rcp.data.dev is not None, con)
        print(f"best checkpoint: {rcp.workdir / 'checkpoints' / 'best.pt'}")


@app.command()
def plot(run_dir: Path = typer.Argument(..., help="A training run folder (the recipe's workdir).",
                                        show_default=False),
         output: Optional[Path] = typer.Option(None, "-o", "--output",
                                               help="PNG to write; default RUN_DIR/curves.png.")
         ) -> None:
    """Plot loss, dev BLEU and learning rate of a training run.

    Reads RUN_DIR/metrics.jsonl and writes a PNG of the curves against steps.
    """
    with user_errors():
        from nmt_cli.plot import plot_run

        print(f"wrote {plot_run(run_dir, output)}")


@app.command()
def average(
    checkpoints: List[Path] = typer.Argument(..., help="Checkpoints to average, or one run folder "
                                                       "with --last.", show_default=False),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the averaged model."),
    last: Optional[int] = typer.Option(None, "--last", min=1,
                                       help="Average the newest N checkpoints of the run folder."),
) -> None:
    """Average the weights of several checkpoints of one model."""
    with user_errors():
        from nmt_cli.training.average import average_to_file, run_checkpoints

        if last is not None:
            if len(checkpoints) != 1 or not checkpoints[0].is_dir():
                raise NmtError("--last N takes one run folder (the recipe's workdir)")
            paths = run_checkpoints(checkpoints[0], last)
            if len(paths) < last:
                print(f"note: {checkpoints[0]} holds {len(paths)} step checkpoint(s), not "
                      f"{last}; averaging those", file=sys.stderr)
        else:
            dirs = [p for p in checkpoints if p.is_dir()]
            if dirs:
                raise NmtError(f"{dirs[0]} is a folder; give checkpoint files, or one run folder "
                               "with --last N")
            paths = list(checkpoints)
        average_to_file(paths, output)
        print(f"averaged {len(paths)} checkpoint(s) ({', '.join(str(p) for p in paths)}) "
              f"into {output}")
