"""The container and Kubernetes files cannot run here (no Docker engine, no cluster): check that
they parse and that names, ports and versions agree with the pipeline and the pinned versions."""

import os
import re
import xml.etree.ElementTree as ET

import pytest
import yaml
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, PortableOptions

import crawl2clip
from crawl2clip.pipelines.options import Crawl2ClipOptions, output_flag_to_output_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")


def read(*parts: str) -> str:
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


def shell_setting(name: str) -> str:
    return re.search(rf"^{name}=([^\s#]+)", read("deploy", "cluster.sh"), re.M).group(1)


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    docs = {}
    for name in sorted(os.listdir(os.path.join(DEPLOY, "k8s"))):
        for doc in yaml.safe_load_all(read("deploy", "k8s", name)):
            docs[doc["kind"]] = doc
    return docs


def beam_pin() -> str:
    return re.search(r"apache-beam(?:\[[^\]]*\])?==([\d.]+)", read("setup.py")).group(1)


def test_one_beam_version_everywhere():
    assert beam_pin() == "2.62.0"
    assert "apache-beam==2.62.0" in read("constraints.txt")
    assert shell_setting("BEAM_VERSION") == beam_pin()
    assert re.search(r"ARG BEAM_VERSION=([\d.]+)", read("deploy", "container", "Dockerfile")).group(1) == beam_pin()
    for runner in ("flink", "spark"):
        pom = ET.parse(os.path.join(DEPLOY, "jobserver", runner, "pom.xml")).getroot()
        ns = {"m": "http://maven.apache.org/POM/4.0.0"}
        assert pom.find("m:properties/m:beam.version", ns).text == beam_pin()


def test_container_matches_the_python_and_package():
    dockerfile = read("deploy", "container", "Dockerfile")
    assert "FROM apache/beam_python3.11_sdk:${BEAM_VERSION}" in dockerfile
    assert 'python_requires=">=3.11"' in read("setup.py")
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert os.path.exists(os.path.join(REPO, path)), path
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in dockerfile


def test_flink_deployment_gpu_sidecar(manifests):
    flink = manifests["FlinkDeployment"]["spec"]
    minor = shell_setting("FLINK_MINOR")
    assert flink["flinkVersion"] == "v" + minor.replace(".", "_")
    assert flink["image"].startswith("flink:" + shell_setting("FLINK_VERSION"))
    containers = {c["name"]: c for c in flink["taskManager"]["podTemplate"]["spec"]["containers"]}
    sidecar = containers["beam-worker-pool"]
    assert sidecar["image"] == f"crawl2clip/beam-worker:{crawl2clip.__version__}"
    assert sidecar["args"] == ["--worker_pool"]
    assert int(sidecar["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_submit_job_agrees_with_the_cluster_and_the_options(manifests):
    flink = manifests["FlinkDeployment"]
    (container,) = manifests["Job"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"crawl2clip/beam-worker:{crawl2clip.__version__}"
    assert container["command"] == ["crawl2clip"] and container["args"][0] == "extract"
    argv = output_flag_to_output_dir(container["args"][1:])  # what the crawl2clip command does
    options = PipelineOptions(argv)
    flink_options = options.view_as(FlinkRunnerOptions)
    assert flink_options.flink_master == f"{flink['metadata']['name']}-rest:{flink['spec']['flinkConfiguration']['rest.port']}"
    assert flink_options.flink_version == shell_setting("FLINK_MINOR")
    assert flink_options.flink_job_server_jar.endswith(f"beam-flink-{shell_setting('FLINK_MINOR')}-job-server-{beam_pin()}.jar")
    portable = options.view_as(PortableOptions)
    sidecar = next(c for c in flink["spec"]["taskManager"]["podTemplate"]["spec"]["containers"]
                   if c["name"] == "beam-worker-pool")
    assert portable.environment_type == "EXTERNAL"
    assert portable.environment_config == f"localhost:{sidecar['ports'][0]['containerPort']}"
    assert portable.output_executable_path is None
    assert options.view_as(Crawl2ClipOptions).validate_extract() == []
    # every flag the Job passes is one Beam or crawl2clip knows
    known = set(options.get_all_options(retain_unknown_options=False))
    for arg in argv:
        assert arg.split("=", 1)[0].lstrip("-").replace("-", "_") in known, arg
