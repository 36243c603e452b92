"""Time `${= ...}` expressions against the plain `${...}` references they often replace.

Evaluates, in the same run, a template that is one reference (`${inputs.flag}`), the
defaulting expression GitHub workflows use most (`${= inputs.flag || false}`), a chooser
(`${= inputs.env == 'prod' && 'large' || 'small'}`), a projection with a join over 100 items,
and a `format` with three arguments. Prints the median time per evaluation and the ratio to
the plain reference (the baseline measured in this run); compile time likewise. Machines
here are shared and noisy: read the ratios, not the absolute times.

    python bench/expressions.py [--repeat 7] [--loops 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentflow.plan import Scope, StepView, compile_template

CASES = {
    "reference": "${inputs.flag}",
    "default": "${= inputs.flag || false}",
    "choose": "${= inputs.env == 'prod' && 'large' || 'small'}",
    "project+join": "${= join(steps.a.output.labels[*].name, ',')}",
    "format": "${= format('{0}/{1}@{2}', inputs.env, inputs.flag, steps.a.status)}",
}
SCOPE = Scope(inputs={"flag": None, "env": "prod"}, steps={"a": StepView(
    "succeeded", {"labels": [{"name": f"label-{i}"} for i in range(100)]})})


def per_call(function: object, loops: int, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(loops):
            function()  # type: ignore[operator]
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--loops", type=int, default=20_000)
    options = parser.parse_args()
    evaluate, compile_ = {}, {}
    for name, text in CASES.items():
        template = compile_template(text)
        evaluate[name] = per_call(lambda t=template: t.evaluate(SCOPE), options.loops,
                                  options.repeat)
        compile_[name] = per_call(lambda s=text: compile_template(s), options.loops // 10,
                                  options.repeat)
    print(f"median of {options.repeat} x {options.loops:,} evaluations "
          f"({options.loops // 10:,} compilations)")
    print(f"{'case':<14}{'evaluate':>12}{'x ref':>8}{'compile':>12}{'x ref':>8}")
    for name in CASES:
        ratio, compile_ratio = (evaluate[name] / evaluate["reference"],
                                compile_[name] / compile_["reference"])
        print(f"{name:<14}{evaluate[name] * 1e6:>10.2f}us{ratio:>8.1f}"
              f"{compile_[name] * 1e6:>10.2f}us{compile_ratio:>8.1f}")


if __name__ == "__main__":
    main()
