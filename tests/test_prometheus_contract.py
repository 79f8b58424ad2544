"""The prometheus_client details this project relies on; fails loudly if a release changes them."""

import os
import textwrap

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from tests.support import run_python_json

# Runs in multiprocess mode: the public path and the direct path must leave
# exactly the same values in the files, and the private attributes the
# direct path reads must exist.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.multiprocess import MultiProcessCollector
    from service.mmap_values import direct_writer

    def make(prefix):
        histogram = Histogram(prefix + "_tokens", "h", ["type"], buckets=(100, 500, 1000, 2000, 5000, 10000))
        counter = Counter(prefix + "_total", "c", ["type"])
        return (histogram.labels("input"), histogram.labels("output"),
                counter.labels("input"), counter.labels("output"))

    public, direct = make("public"), make("direct")
    writer = direct_writer(*direct)
    calls = [(0, 0), (100, 101), (101, 5000), (10000, 10001), (123456, 7)]
    for input_tokens, output_tokens in calls:
        public[0].observe(input_tokens); public[1].observe(output_tokens)
        public[2].inc(input_tokens); public[3].inc(output_tokens)
        writer.record(input_tokens, output_tokens)

    gauge = Gauge("level", "g", multiprocess_mode="mostrecent")
    gauge.set(3.5)
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    merged = {}
    for metric in MultiProcessCollector.merge([os.path.join(directory, name) for name in os.listdir(directory)]):
        for sample in metric.samples:
            owner = metric.name.split("_")[0]
            key = sample.name.replace(owner + "_", "", 1) + str(sorted(sample.labels.items()))
            merged[owner + ":" + key] = (owner, sample.value)
    print(json.dumps({"writer": writer is not None, "files": sorted(os.listdir(directory)), "pid": os.getpid(),
                      "merged": merged, "in_memory": direct[2]._value.get()}))
    """
)


def test_direct_writer_matches_public_api_in_multiprocess_mode(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    report = run_python_json(SCRIPT, env)

    pid = report["pid"]
    assert report["writer"] is True
    assert report["files"] == [
        f"counter_{pid}.db",
        f"gauge_mostrecent_{pid}.db",
        f"histogram_{pid}.db",
    ]
    public = {
        key.split(":")[1]: sample
        for key, (owner, sample) in report["merged"].items()
        if owner == "public"
    }
    direct = {
        key.split(":")[1]: sample
        for key, (owner, sample) in report["merged"].items()
        if owner == "direct"
    }
    assert report["merged"]["level:level[]"] == ["level", 3.5]
    assert public and public == direct
    assert report["in_memory"] == 0 + 100 + 101 + 10000 + 123456


def test_mmaped_dict_round_trips_values_and_timestamps(tmp_path):
    path = tmp_path / "counter_archive.db"
    key = mmap_key("llm_tokens", "llm_tokens_total", ["provider"], ["groq"], "help")

    values = MmapedDict(str(path))
    values.write_value(key, 42.0, 7.5)
    values.close()

    assert [
        (k, v, t) for k, v, t, _ in MmapedDict.read_all_values_from_file(str(path))
    ] == [(key, 42.0, 7.5)]


def test_merge_reads_an_archive_file_by_its_type_prefix(tmp_path):
    key = mmap_key("llm_tokens", "llm_tokens_total", ["provider"], ["groq"], "help")
    for name, amount in (("counter_archive.db", 5.0), ("counter_123.db", 2.0)):
        values = MmapedDict(str(tmp_path / name))
        values.write_value(key, amount, 0.0)
        values.close()

    metrics = list(
        MultiProcessCollector.merge([str(path) for path in tmp_path.iterdir()])
    )

    assert [(metric.type, [s.value for s in metric.samples]) for metric in metrics] == [
        ("counter", [7.0])
    ]
