"""`python manage.py kb_eval KB [--set NAME] [--mode MODE]`: score a knowledge base's evaluation
sets in the foreground with a progress bar, print the metrics, and exit 1 when a set falls by
more than its threshold against its previous run (an operator's CI gate)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from evaluation.metrics import METRIC_NAMES
from evaluation.models import EvaluationRun, RunStatus
from evaluation.services import EvaluationError, run_create, run_execute
from kb.management.commands.kb_import import knowledge_base_named
from kb.models import RetrievalMode


class Command(BaseCommand):
    help = "Score a knowledge base's evaluation sets; exit 1 when one regressed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("knowledge_base", help="id, name, or TEAM-SLUG/NAME")
        parser.add_argument("--set", dest="set_name", help="only this set (default: every set)")
        parser.add_argument(
            "--mode", action="append", choices=RetrievalMode.values, help="repeatable; default: every mode"
        )
        parser.add_argument("--top-k", type=int, default=10)

    def handle(self, *args: Any, **options: Any) -> None:
        kb = knowledge_base_named(options["knowledge_base"])
        sets = kb.evaluation_sets.all()
        if options["set_name"]:
            sets = sets.filter(name=options["set_name"])
        if not sets:
            raise CommandError(
                f"{kb.name} has no evaluation set{' named ' + options['set_name'] if options['set_name'] else ''}"
            )
        modes = options["mode"] or list(RetrievalMode.values)
        regressed = []
        for evaluation_set in sets:
            try:
                run = run_create(evaluation_set=evaluation_set, modes=modes, top_k=options["top_k"])
            except EvaluationError as exc:
                raise CommandError(f"{evaluation_set.name}: {exc}") from None
            with tqdm(desc=evaluation_set.name, unit="question", file=self.stderr._out) as bar:

                def advance(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                finished = run_execute(run_id=run.pk, on_progress=advance)
            if finished is None or finished.status != RunStatus.DONE:
                error = finished.error if finished else "the run was taken by another process"
                raise CommandError(f"{evaluation_set.name}: {error}")
            self.stdout.write(metrics_table(finished))
            if finished.regressed:
                regressed.append(finished.regression)
        for regression in regressed:
            self.stderr.write(f"REGRESSED {regression}")
        if regressed:
            raise SystemExit(1)


def metrics_table(run: EvaluationRun) -> str:
    """The run's metrics, one row per mode, as a Markdown table."""
    lines = [
        f"{run.evaluation_set.name} (run {run.pk}, {run.results.count()} questions, generation {run.generation})",
        "| mode | " + " | ".join(METRIC_NAMES) + " |",
        "| --- |" + " ---: |" * len(METRIC_NAMES),
    ]
    for mode, values in run.metrics.items():
        cells = ["-" if values.get(name) is None else f"{values[name]:g}" for name in METRIC_NAMES]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
