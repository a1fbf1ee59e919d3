"""The two Beam jobs stay within what every runner here executes correctly.

Beam 2.77's Dask runner drops tagged outputs of multi-output ParDos, computes only the last branch
of a PCollection read twice, loses what finish_bundle emits, and mishandles Beam's file sinks and
sources (pipeline/beam_runners.py). This builds both jobs' graphs without running them and walks
every transform.
"""

import apache_beam as beam
import pytest

from pipeline import beam_jobs, generate, preprocess


class _Built(Exception):
    """Raised instead of running: the job's pipeline has been built."""


def _job_graph(monkeypatch, run_job) -> beam.Pipeline:
    built = []

    def build_only(build, pipeline_args=(), elements=None):
        pipeline = beam.Pipeline(options=beam_jobs.pipeline_options(pipeline_args, elements))
        build(pipeline)
        built.append(pipeline)
        raise _Built

    monkeypatch.setattr(beam_jobs, "run_pipeline", build_only)
    with pytest.raises(_Built):
        run_job()
    return built[0]


def portability_problems(pipeline: beam.Pipeline) -> list:
    """Every use of a feature some runner here executes wrongly, one line each."""
    problems, consumers = [], {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            self.visit_transform(node)

        def visit_transform(self, node):
            transform = node.transform
            if transform is None:
                return
            if type(transform).__module__.startswith("apache_beam.io"):
                problems.append(f"{node.full_label}: Beam file/IO transform {type(transform).__name__}")
            if node.parts:  # composites: only their IO class matters; leaves below are checked
                return
            for value in list(node.main_inputs.values()) + [side.pvalue for side in node.side_inputs]:
                consumers.setdefault(id(value), (value, []))[1].append(node.full_label)
            if isinstance(transform, beam.ParDo):
                if transform.output_tags or len(node.outputs) > 1:
                    problems.append(f"{node.full_label}: multi-output ParDo {sorted(map(str, node.outputs))}")
                if type(transform.fn).finish_bundle is not beam.DoFn.finish_bundle:
                    problems.append(f"{node.full_label}: {type(transform.fn).__name__} overrides finish_bundle")

    pipeline.visit(Visitor())
    for value, labels in consumers.values():
        if len(labels) > 1:
            problems.append(f"{value.producer.full_label if value.producer else value}: consumed by {labels}")
    return problems


def test_generate_uses_only_what_every_runner_executes(monkeypatch, tmp_path):
    pipeline = _job_graph(monkeypatch, lambda: generate.generate_play_data(
        env="cube-single", episodes=2, val_episodes=1, episode_length=20, output_dir=str(tmp_path), progress=False))
    assert portability_problems(pipeline) == []
    labels = []
    pipeline.visit(type("Labels", (beam.pipeline.PipelineVisitor,), {
        "visit_transform": lambda self, node: labels.append(node.full_label)})())
    assert any(label.startswith("Rollout") for label in labels)


def test_preprocess_uses_only_what_every_runner_executes(monkeypatch, cube_npz_dir, tmp_path):
    pipeline = _job_graph(monkeypatch, lambda: preprocess.preprocess(
        f"ogbench:{cube_npz_dir / 'cube-single-play-v0.npz'}", str(tmp_path / "out"), num_shards=2))
    assert portability_problems(pipeline) == []


class _Tagged(beam.DoFn):
    def process(self, element):
        yield beam.pvalue.TaggedOutput("odd", element)


class _Buffered(beam.DoFn):
    def process(self, element):
        yield element

    def finish_bundle(self):
        pass


def test_the_check_finds_each_unsupported_feature(tmp_path):
    pipeline = beam.Pipeline()
    numbers = pipeline | "Numbers" >> beam.Create([1, 2])
    numbers | "Tagged" >> beam.ParDo(_Tagged()).with_outputs("odd", main="even")
    numbers | "Buffered" >> beam.ParDo(_Buffered())
    numbers | "Text" >> beam.io.WriteToText(str(tmp_path / "out"))
    found = "\n".join(portability_problems(pipeline))
    for fragment in ("Tagged/ParDo(_Tagged): multi-output ParDo", "_Buffered overrides finish_bundle",
                     "Beam file/IO transform WriteToText", "Numbers/Map(decode): consumed by ['Tagged/ParDo(_Tagged)', 'Buffered'"):
        assert fragment in found
