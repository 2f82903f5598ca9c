"""The container and Kubernetes files cannot run here (no Docker engine, no cluster): check them
against the real schemas a cluster would check them with (Kubernetes' own, from the
kubernetes-validate package; the Flink Kubernetes Operator's CRD, from its API jar on Maven
Central), and check that names, ports, versions, flags and GPU counts agree with the pipeline,
deploy/cluster.sh and the pinned versions."""

import copy
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
import zipfile

import jsonschema
import kubernetes_validate
import pytest
import yaml
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    HadoopFileSystemOptions,
    JobServerOptions,
    PipelineOptions,
    PortableOptions,
)

import crawl2clip
from crawl2clip.models.devices import choose_device
from crawl2clip.pipelines.flags import check_flags
from crawl2clip.pipelines.options import Crawl2ClipOptions, output_flag_to_output_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")
KUBERNETES_VERSION = "1.33"  # the API the manifests are written for (kubernetes-validate's schemas)
FLINK_OPERATOR = "1.10.0"  # the Flink Kubernetes Operator whose CRD they are written for
OPERATOR_JAR = f"flink-kubernetes-operator-api-{FLINK_OPERATOR}.jar"
CRD_ENTRY = "META-INF/fabric8/flinkdeployments.flink.apache.org-v1.yml"
SCHEMA_CACHE = os.path.join(REPO, ".cache", "k8s-schemas")


def read(*parts: str) -> str:
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


def shell_setting(name: str) -> str:
    return re.search(rf"^{name}=([^\s#]+)", read("deploy", "cluster.sh"), re.M).group(1)


def shell_default(name: str) -> str:
    """The default of a `NAME="${NAME:-default}"` setting of cluster.sh."""
    return re.search(rf'^{name}="\$\{{{name}:-([^}}]+)\}}"', read("deploy", "cluster.sh"), re.M).group(1)


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict]:
    """Every object in deploy/k8s/*.yaml by (kind, name)."""
    docs = {}
    for name in sorted(os.listdir(os.path.join(DEPLOY, "k8s"))):
        assert name.endswith(".yaml"), name
        for doc in yaml.safe_load_all(read("deploy", "k8s", name)):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def one(manifests: dict, kind: str) -> dict:
    (doc,) = [doc for (k, _), doc in manifests.items() if k == kind]
    return doc


def containers(pod_spec: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod_spec["containers"]}


def job_container(manifests: dict) -> dict:
    (container,) = one(manifests, "Job")["spec"]["template"]["spec"]["containers"]
    return container


def sidecar(manifests: dict) -> dict:
    pod = one(manifests, "FlinkDeployment")["spec"]["taskManager"]["podTemplate"]
    return containers(pod["spec"])["beam-worker-pool"]


def secret_values(manifests: dict, name: str) -> dict[str, str]:
    return manifests[("Secret", name)]["stringData"]


def job_argv(manifests: dict) -> list[str]:
    """The Job's command line as its container runs it: `$(VAR)` expanded from its environment,
    the values read from the Secrets they reference."""
    container = job_container(manifests)
    environment = {}
    for variable in container["env"]:
        ref = variable["valueFrom"]["secretKeyRef"]
        environment[variable["name"]] = secret_values(manifests, ref["name"])[ref["key"]]
    return [re.sub(r"\$\((\w+)\)", lambda m: environment[m.group(1)], arg) for arg in container["args"]]


def job_options(manifests: dict) -> PipelineOptions:
    return PipelineOptions(output_flag_to_output_dir(job_argv(manifests)[1:]))  # what the crawl2clip command does


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


# --- the schemas a cluster checks them with --------------------------------------------------

def test_kubernetes_objects_match_the_kubernetes_schemas(manifests):
    """Strict schemas: a misspelt field is an error, as with `kubectl apply --validate=strict`."""
    core = {key: doc for key, doc in manifests.items() if not doc["apiVersion"].startswith("flink.apache.org/")}
    assert sorted(kind for kind, _ in core) == ["Job", "PersistentVolumeClaim", "Secret"]
    for doc in core.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # the TaskManagers' pod template is a Pod
    kubernetes_validate.validate(one(manifests, "FlinkDeployment")["spec"]["taskManager"]["podTemplate"],
                                 KUBERNETES_VERSION, strict=True)
    misspelt = copy.deepcopy(one(manifests, "Job"))
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)


def _operator_crd() -> dict:
    """The FlinkDeployment CRD of the operator's API jar (Maven Central, fetched once into .cache/)."""
    jar = os.path.join(SCHEMA_CACHE, OPERATOR_JAR)
    if not os.path.exists(jar):
        if shutil.which("mvn") is None:
            pytest.skip("Maven is needed to fetch the Flink operator's CRD (make test installs it)")
        subprocess.run(["mvn", "-q", "-B", "dependency:copy",
                        f"-Dartifact=org.apache.flink:flink-kubernetes-operator-api:{FLINK_OPERATOR}",
                        f"-DoutputDirectory={SCHEMA_CACHE}"], check=True, cwd=REPO, timeout=600)
    with zipfile.ZipFile(jar) as archive:
        return yaml.safe_load(archive.read(CRD_ENTRY))


def _closed(schema):
    """A CRD's structural schema with unknown fields refused: the API server would drop them
    silently (pruning), so a misspelt field would be lost rather than reported."""
    if isinstance(schema, dict):
        schema = {key: _closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_closed(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def flink_deployment_validator() -> jsonschema.Draft7Validator:
    crd = _operator_crd()
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    assert crd["spec"]["names"]["kind"] == "FlinkDeployment" and version["served"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    # A CRD's schema covers spec and status; the API server checks the fields every object has.
    schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
    return jsonschema.Draft7Validator(_closed(schema))


def test_flink_deployment_matches_the_operators_crd(manifests, flink_deployment_validator):
    deployment = one(manifests, "FlinkDeployment")
    assert deployment["apiVersion"] == "flink.apache.org/v1beta1"
    flink_deployment_validator.validate(deployment)
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["taskManager"]["replica"] = misspelt["spec"]["taskManager"].pop("replicas")
    assert not flink_deployment_validator.is_valid(misspelt)
    unknown_flink = copy.deepcopy(deployment)
    unknown_flink["spec"]["flinkVersion"] = "v1_99"
    assert not flink_deployment_validator.is_valid(unknown_flink)


# --- what the manifests must agree on ----------------------------------------------------------

def test_flink_deployment_agrees_with_cluster_sh_and_the_image(manifests):
    flink = one(manifests, "FlinkDeployment")["spec"]
    assert flink["flinkVersion"] == "v" + shell_setting("FLINK_MINOR").replace(".", "_")
    assert flink["image"].startswith("flink:" + shell_setting("FLINK_VERSION") + "-")
    configuration = flink["flinkConfiguration"]
    assert configuration["rest.port"] == shell_default("FLINK_REST_PORT")
    assert configuration["restart-strategy.type"] == "fixed-delay"  # as cluster.sh's, so the fault tests hold
    assert configuration["restart-strategy.fixed-delay.attempts"] == shell_default("FLINK_RESTART_ATTEMPTS")
    assert configuration["restart-strategy.fixed-delay.delay"] == shell_default("FLINK_RESTART_DELAY")
    assert "type: fixed-delay" in read("deploy", "cluster.sh")
    pool = sidecar(manifests)
    assert pool["image"] == f"crawl2clip/beam-worker:{crawl2clip.__version__}"
    assert pool["args"] == ["--worker_pool"]  # Beam's boot program: a pool that hands workers their options


def test_one_python_worker_process_per_gpu(manifests):
    """Each TaskManager runs as many SDK worker processes as its sidecar has GPUs, and the score
    stage's device choice (models/devices.py, --clip-device auto) gives each its own GPU."""
    flink = one(manifests, "FlinkDeployment")["spec"]
    pool = sidecar(manifests)
    gpus = int(pool["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1
    assert int(flink["flinkConfiguration"]["taskmanager.numberOfTaskSlots"]) == gpus
    options = job_options(manifests)
    assert int(options.view_as(PortableOptions).sdk_worker_parallelism) == gpus
    assert options.view_as(Crawl2ClipOptions).clip_device == "auto"  # "cuda" would put every worker on cuda:0
    environment = {variable["name"] for variable in pool.get("env", [])}
    assert not environment & {"CUDA_VISIBLE_DEVICES", "LOCAL_RANK", "NVIDIA_VISIBLE_DEVICES"}
    # the worker processes of a pod hold slots 0..gpus-1 (their lock files in the sidecar's /tmp)
    devices = [choose_device(gpus, {}, lambda slot=slot: slot) for slot in range(gpus)]
    assert sorted(devices) == [f"cuda:{i}" for i in range(gpus)]
    # the TaskManagers' JVMs get no GPU: only the Python workers use one
    for name, container in containers(flink["taskManager"]["podTemplate"]["spec"]).items():
        if name != "beam-worker-pool":
            assert "nvidia.com/gpu" not in str(container.get("resources", {}))


def test_submit_job_runs_the_whole_pipeline_on_the_session_cluster(manifests):
    deployment = one(manifests, "FlinkDeployment")
    flink = deployment["spec"]
    container = job_container(manifests)
    assert container["image"] == f"crawl2clip/beam-worker:{crawl2clip.__version__}"
    argv = job_argv(manifests)
    assert container["command"] == ["crawl2clip"] and argv[0] == "run"
    check_flags(argv[1:], ("--output",))  # every flag is one crawl2clip or Beam knows, as `crawl2clip run` checks
    options = job_options(manifests)
    run = options.view_as(Crawl2ClipOptions)
    assert run.prune and run.stop_after is None and run.run_stages() == ["extract", "download", "score", "prune"]
    assert run.output_dir.startswith("hdfs://")
    assert run.validate_run() == []

    flink_options = options.view_as(FlinkRunnerOptions)
    rest = f"{deployment['metadata']['name']}-rest:{flink['flinkConfiguration']['rest.port']}"
    assert flink_options.flink_master == rest  # the operator's REST service
    assert flink_options.flink_version == shell_setting("FLINK_MINOR")
    assert flink_options.flink_job_server_jar.endswith(f"beam-flink-{shell_setting('FLINK_MINOR')}-job-server-{beam_pin()}.jar")
    assert flink_options.parallelism == flink["taskManager"]["replicas"] * int(
        flink["flinkConfiguration"]["taskmanager.numberOfTaskSlots"])
    portable = options.view_as(PortableOptions)
    assert portable.environment_type == "EXTERNAL"
    assert portable.environment_config == f"localhost:{sidecar(manifests)['ports'][0]['containerPort']}"
    assert portable.output_executable_path is None


def test_staged_artifacts_are_on_a_volume_the_job_server_and_taskmanagers_share(manifests):
    artifacts_dir = job_options(manifests).view_as(JobServerOptions).artifacts_dir
    claim = manifests[("PersistentVolumeClaim", "crawl2clip-beam-artifacts")]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    job_pod = one(manifests, "Job")["spec"]["template"]["spec"]
    tm_pod = one(manifests, "FlinkDeployment")["spec"]["taskManager"]["podTemplate"]["spec"]
    for pod, container in ((job_pod, job_container(manifests)), (tm_pod, containers(tm_pod)["flink-main-container"])):
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == artifacts_dir]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_storage_settings_come_from_the_secret(manifests):
    container = job_container(manifests)
    storage_flags = [arg for arg in container["args"] if arg.startswith(("--hdfs_", "--s3_"))]
    assert {flag.split("=")[0] for flag in storage_flags} == {"--hdfs_host", "--hdfs_port", "--hdfs_user"}
    environment = {variable["name"]: variable for variable in container["env"]}
    used_keys = set()
    for flag in storage_flags:  # nothing written in the Job itself: each value is a $(VAR) of a secretKeyRef
        match = re.fullmatch(r"--\w+=\$\((\w+)\)", flag)
        assert match, f"{flag}: give the value as $(VAR), VAR read from the Secret"
        variable = match.group(1)
        ref = environment[variable]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secret_values(manifests, ref["name"])
        used_keys.add(ref["key"])
    assert used_keys == set(secret_values(manifests, "crawl2clip-storage"))
    hadoop = job_options(manifests).view_as(HadoopFileSystemOptions)
    assert int(hadoop.hdfs_port) == int(shell_default("HDFS_HTTP_PORT"))  # WebHDFS, as deploy/cluster.sh's HDFS
    assert hadoop.hdfs_host and hadoop.hdfs_user
