"""The local cloud: the whole AWS path on one machine, without an AWS account. moto's server (on 127.0.0.1,
in the background) plays CloudFormation, Batch, S3, ECR and CloudWatch Logs; moto's Batch runs every job in a
real container of our image, on a Docker engine that has no bridge and uses the host's network.

    hydra-awsbatch local-cloud up | status | down
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CLOUD = Path(__file__).parent / "cloud"  # template.yaml, Dockerfile, container_shell_script.sh (package data)
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository, when this runs from a checkout
STATE_DIR = Path(os.environ.get("HYDRA_AWSBATCH_LOCAL_CLOUD_DIR", Path.home() / ".cache/hydra-awsbatch/local-cloud"))
STACK = "hydra-batch"
BASE_TAG = "local/python:3.11"
REGION = "us-east-1"
SAFE_DOCKERD = "dockerd --bridge=none --iptables=false --ip-masq=false --host-gateway-ip=127.0.0.1"


class LocalCloudError(Exception):
    pass


def say(message: str) -> None:
    print(f"[local-cloud] {message}", flush=True)


def took(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60)} s"


@contextlib.contextmanager
def step(what: str, announce: bool = True):
    """Says how long a step of `up` took as it ends (the base image alone takes minutes on a small machine)."""
    if announce:
        say(f"{what}...")
    start = time.monotonic()
    yield
    say(f"{what}: {took(time.monotonic() - start)}")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kwargs)


# ------------------------------------------------------------------------------------------------- docker
def docker_answers() -> str | None:
    """Why no Docker engine answers, or None when one does."""
    if shutil.which("docker") is None:
        return "the docker command is missing: apt-get install docker.io"
    proc = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    if proc.returncode != 0:
        return ("no Docker engine answers. Start one that creates no bridge and no private-range addresses:\n"
                f"    sudo {SAFE_DOCKERD} &")
    return None


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def registry_reachable(timeout: float = 3.0) -> bool:
    try:
        urllib.request.urlopen("https://registry-1.docker.io/v2/", timeout=timeout)
    except urllib.error.HTTPError:
        return True  # 401: it answers
    except OSError:
        return False
    return True


def build_base_image(tag: str = BASE_TAG) -> str:
    """A python:3.11 base without a registry: debootstrap a minimal Debian, add PyTorch from the local wheel
    (or PyPI), and import it into Docker. Cached: a second call finds the image and returns at once."""
    if image_exists(tag):
        say(f"base image {tag}: cached")
        return tag
    if shutil.which("debootstrap") is None:
        raise LocalCloudError("building a base image needs debootstrap (apt-get install debootstrap), or set "
                              "BASE_IMAGE to an image you have")
    rootfs = STATE_DIR / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    say(f"base image {tag}: debootstrap of Debian bookworm (about a minute)...")
    run(["debootstrap", "--variant=minbase", "--include=python3,python3-pip,python3-venv,ca-certificates",
         "bookworm", str(rootfs)], stdout=subprocess.DEVNULL)
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    (rootfs / "usr/bin/python").symlink_to("python3")
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    shutil.copyfile("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    wheels = sorted(Path("/opt/wheels").glob("torch-*cp311*.whl")) if Path("/opt/wheels").is_dir() else []
    torch = "torch --index-url https://download.pytorch.org/whl/cpu"
    if wheels:
        shutil.copyfile(wheels[-1], rootfs / "tmp" / wheels[-1].name)
        torch = f"/tmp/{wheels[-1].name}"
    say(f"base image {tag}: installing PyTorch ({torch.split()[0]})...")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt", "PIP_NO_CACHE_DIR": "1"}
    run(["chroot", str(rootfs), "python3", "-m", "pip", "install", "--quiet", "--root-user-action=ignore",
         *torch.split()], env=env)
    for wheel in (rootfs / "tmp").glob("*.whl"):
        wheel.unlink()
    say(f"base image {tag}: importing into Docker...")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run(["docker", "import", "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "-", tag],
        stdin=tar.stdout, stdout=subprocess.DEVNULL)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    return tag


def base_image() -> str:
    """BASE_IMAGE from the environment, else python:3.11-slim when a registry answers, else a local build."""
    if os.environ.get("BASE_IMAGE"):
        return os.environ["BASE_IMAGE"]
    if registry_reachable():
        return "python:3.11-slim"
    return build_base_image()


def build_context(target: Path) -> Path:
    """The Dockerfile's build context: the checkout itself, or one made from the installed package (its
    modules, the Dockerfile and entry script from its package data, and its metadata as a pyproject.toml)."""
    if (CHECKOUT / "setup.py").is_file() and (CHECKOUT / "Dockerfile").is_file():
        return CHECKOUT
    import importlib.metadata

    from packaging.requirements import Requirement

    dist = importlib.metadata.distribution("hydra-awsbatch-launcher")
    shutil.rmtree(target, ignore_errors=True)
    for name in ("Dockerfile", "container_shell_script.sh"):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CLOUD / name, target / name)
    package = Path(__file__).parent
    shutil.copytree(package, target / "hydra_plugins" / package.name, symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "cloud"))
    plain, extras = [], {}
    for text in dist.requires or []:
        requirement = Requirement(text)
        marker = str(requirement.marker or "")
        requirement.marker = None
        if marker.startswith("extra =="):
            extras.setdefault(marker.split("==")[1].strip().strip("\"'"), []).append(str(requirement))
        else:
            plain.append(str(requirement))
    optional = "\n".join(f"{name} = {json.dumps(reqs)}" for name, reqs in extras.items())
    (target / "pyproject.toml").write_text(f"""[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist.metadata['Name']}"
version = "{dist.version}"
dependencies = {json.dumps(plain)}

[project.optional-dependencies]
{optional}

[tool.setuptools.packages.find]
include = ["hydra_plugins.*"]
""")
    (target / "setup.py").write_text("from setuptools import setup\n\nsetup()\n")
    (target / "README.md").write_text(dist.metadata.get("Summary", "") + "\n")
    return target


def build_image(tag: str, base: str) -> None:
    context = build_context(STATE_DIR / "build-context")
    say(f"building {tag} from {base} (docker build --network host, context {context})...")
    run(["docker", "build", "--network", "host", "--quiet", "--build-arg", f"BASE_IMAGE={base}", "-t", tag,
         str(context)], stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------------------- moto
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_moto() -> None:
    """A moto whose internals the server's patches (_moto_server.py) do not find is refused here, in the terminal,
    before anything starts."""
    from hydra_plugins.hydra_awsbatch_launcher import _hooks

    try:
        _hooks.check(_hooks.MOTO)
    except _hooks.HookMissing as exc:
        raise LocalCloudError(str(exc)) from None


def start_moto(state_dir: Path) -> tuple[int, str]:
    """moto's server on 127.0.0.1, in the background; its Batch runs jobs in host-network containers."""
    port = free_port()
    log = open(state_dir / "moto.log", "ab")
    env = dict(os.environ, MOTO_DOCKER_NETWORK_MODE="host")
    proc = subprocess.Popen([sys.executable, "-m", "hydra_plugins.hydra_awsbatch_launcher._moto_server",  # + MNP jobs
                             "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return proc.pid, endpoint
        except OSError:
            if proc.poll() is not None:
                last = (state_dir / "moto.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise LocalCloudError(f"moto's server exited{': ' + last[0] if last else ''}; see "
                                      f"{state_dir / 'moto.log'}") from None
            time.sleep(0.2)
    raise LocalCloudError(f"moto's server did not answer on {endpoint}; see {state_dir / 'moto.log'}")


def client(endpoint: str, service: str):
    import boto3

    from hydra_plugins.hydra_awsbatch_launcher._batch import DUMMY_CREDENTIALS

    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        **{name.lower(): value for name, value in DUMMY_CREDENTIALS.items()})


def batch_service_role(iam) -> str:
    """Batch's service-linked role, which AWS creates on first use and moto must be given."""
    roles = iam.list_roles(PathPrefix="/aws-service-role/batch.amazonaws.com/")["Roles"]
    if roles:
        return roles[0]["Arn"]
    return iam.create_service_linked_role(AWSServiceName="batch.amazonaws.com")["Role"]["Arn"]


def deploy_stack(endpoint: str, stack: str = STACK, **parameters: str) -> dict:
    """template.yaml into moto's CloudFormation; returns the stack's outputs."""
    cloudformation = client(endpoint, "cloudformation")
    params = {"EnvironmentName": stack, "ServiceRoleArn": batch_service_role(client(endpoint, "iam")),
              "JobTimeoutSeconds": "3600", **parameters}
    cloudformation.create_stack(StackName=stack, TemplateBody=(CLOUD / "template.yaml").read_text(),
                                Capabilities=["CAPABILITY_IAM"],
                                Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()])
    found = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    if found["StackStatus"] != "CREATE_COMPLETE":
        raise LocalCloudError(f"stack {stack}: {found['StackStatus']} {found.get('StackStatusReason', '')}")
    return {o["OutputKey"]: o["OutputValue"] for o in found["Outputs"]}


def image_tag(state_dir: Path) -> str:
    """The job image's tag of the local cloud kept in `state_dir`: one per cloud, so that two clouds of one stack
    name (two checkouts, each with its HYDRA_AWSBATCH_LOCAL_CLOUD_DIR) never run each other's code."""
    return "cloud-" + hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]


def deploy(endpoint: str, stack: str, state_dir: Path) -> tuple[dict, str]:
    """The stack of the local cloud kept in `state_dir`, its job definitions on that cloud's own image tag: the
    stack's outputs, and the image to build."""
    tag = image_tag(state_dir)
    outputs = deploy_stack(endpoint, stack, ImageTag=tag)
    return outputs, f"{outputs['RepositoryUri']}:{tag}"


# ---------------------------------------------------------------------------------------------- commands
def state_file() -> Path:
    return STATE_DIR / "state.json"


def read_state() -> dict | None:
    try:
        return json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None


def process_start(pid: int) -> str | None:
    """When the process `pid` started (clock ticks since boot), or None when there is none: with the pid,
    it names one process, even after the pid is reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(state: dict) -> bool:
    """Whether the moto server of `state` still runs: its pid, started when it was (not a reused pid)."""
    started = process_start(state["pid"])
    return started is not None and started == state.get("pid_start")  # no start time recorded: no proof


def environment(endpoint: str) -> dict[str, str]:
    """What a shell (or a test) needs to talk to the local cloud: dummy credentials, region and endpoint."""
    from hydra_plugins.hydra_awsbatch_launcher._batch import DUMMY_CREDENTIALS

    return {**DUMMY_CREDENTIALS, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": endpoint}


def exports(state: dict) -> str:
    return "\n".join(f"export {k}={v}" for k, v in environment(state["endpoint"]).items())


def cloud_extra_missing() -> str | None:
    """Why moto's server cannot start (its package or its server's web framework is not installed), or None."""
    missing = [name for name in ("moto", "flask", "flask_cors") if importlib.util.find_spec(name) is None]
    if missing:
        return (f"the local cloud runs moto's server, and {', '.join(missing)} is not installed: "
                "pip install 'hydra-awsbatch-launcher[cloud]' (from a checkout: pip install -e '.[cloud]')")
    return None


def up(stack: str = STACK) -> dict:
    state = read_state()
    if state and alive(state) and state.get("outputs"):
        say(f"already up: moto's server pid {state['pid']} at {state['endpoint']}")
        print_usage(state)
        return state
    if missing := cloud_extra_missing():
        raise LocalCloudError(missing)
    check_moto()
    problem = docker_answers()
    if problem:
        raise LocalCloudError(problem)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with step("starting moto's server on 127.0.0.1"):
        pid, endpoint = start_moto(STATE_DIR)
    state = {"pid": pid, "pid_start": process_start(pid), "endpoint": endpoint, "stack": stack,
             "started": time.time()}
    state_file().write_text(json.dumps(state))
    with step(f"deploying template.yaml as stack {stack}"):
        outputs, image = deploy(endpoint, stack, STATE_DIR)
    with step("base image"):
        base = base_image()
    with step("job image", announce=False):
        build_image(image, base)
    state.update(outputs=outputs, image=image)
    state_file().write_text(json.dumps(state))
    say(f"up in {took(time.monotonic() - started)}.")
    print_usage(state)
    return state


def print_usage(state: dict) -> None:
    """The lines to export, and the command that runs the example sweep in the local cloud."""
    say("In your shell:")
    print(exports(state))
    print(f"python train_model.py --multirun lr=1e-3,1e-4 hydra/launcher=aws_batch "
          f"hydra.launcher.stack_name={state['stack']} "
          f"checkpoint.uri={state['outputs']['StagingUri']}/checkpoints/'${{hydra:job.num}}'")


def status() -> int:
    state = read_state()
    if not state:
        say("down (no state file)")
        return 1
    running = alive(state)
    say(f"moto's server pid {state['pid']} at {state['endpoint']}: {'running' if running else 'gone'}")
    say(f"stack {state['stack']}: {json.dumps(state.get('outputs', {}))}")
    say(f"job image: {state.get('image', '-')}")
    return 0 if running else 1


def job_containers(state: dict) -> list[str]:
    """The containers that moto's server of `state` started for Batch jobs, running or ended: those of its image
    whose environment names its port (another local cloud's, of the same image, are not ours)."""
    from urllib.parse import urlparse

    if not state.get("image") or docker_answers() is not None:
        return []
    ids = run(["docker", "ps", "-aq", "--filter", f"ancestor={state['image']}"], capture_output=True).stdout.split()
    if not ids:
        return []
    port = f"MOTO_PORT={urlparse(state['endpoint']).port}"
    found = json.loads(run(["docker", "inspect", *ids], capture_output=True).stdout)
    return [c["Name"].lstrip("/") for c in found if port in (c.get("Config") or {}).get("Env") or []]


def images_kept(state: dict | None, remove: bool) -> None:
    """Say what disk the images that `up` built keep (the job image, the debootstrapped base), or remove them."""
    if docker_answers() is not None:
        return
    found = {}
    for tag in filter(None, [(state or {}).get("image"), BASE_TAG]):
        proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True,
                              text=True)
        if proc.returncode == 0:
            found[tag] = f"{int(proc.stdout.strip() or 0) / 1e9:.1f} GB"
    if not found:
        return
    listed = ", ".join(f"{tag} ({size})" for tag, size in found.items())
    if remove:
        run(["docker", "image", "rm", "--force", *found], capture_output=True)
        say(f"removed the images {listed}")
    else:
        overlap = " (sizes overlap: the job image holds its base's layers)" if len(found) > 1 else ""
        say(f"the images {listed} stay on disk{overlap}, so the next up takes seconds; "
            "hydra-awsbatch local-cloud down --images removes them")


def down(images: bool = False) -> int:
    """Stop what `up` started (the job containers moto's server started, and the server, by its pid) and nothing
    else; say what disk its images keep, or remove them (`images`)."""
    state = read_state()
    if not state:
        say("nothing to stop")
        images_kept(None, images)
        return 0
    containers = job_containers(state)
    if containers:  # moto's job threads would have removed them; they die with the server
        run(["docker", "rm", "--force", *containers], capture_output=True)
        say(f"stopped and removed {len(containers)} job containers: {', '.join(containers)}")
    if alive(state):
        os.kill(state["pid"], signal.SIGTERM)
        for _ in range(50):
            if not alive(state):
                break
            time.sleep(0.1)
        say(f"stopped moto's server (pid {state['pid']})")
    elif process_start(state["pid"]) is not None and "pid_start" not in state:
        say(f"pid {state['pid']} runs, but {state_file()} (from an older version) has no start time to prove it "
            "is moto's server; left alone: stop it yourself if it is")
    elif process_start(state["pid"]) is not None:
        say(f"pid {state['pid']} is another process now (moto's server ended earlier); left alone")
    state_file().unlink()
    images_kept(state, images)
    return 0
