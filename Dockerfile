# The job image: Python, PyTorch, the example's dependencies and this launcher's worker.
#   docker build -t hydra-awsbatch .                                                  # CPU, python:3.11-slim
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime -t hydra-awsbatch:gpu .
# The base's Python minor version must match the one you launch sweeps from (the worker checks).
ARG BASE_IMAGE=python:3.11-slim
# checkov:skip=CKV_DOCKER_7: the base is chosen per build (BASE_IMAGE); its default pins the Python minor version the worker checks
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
WORKDIR /opt/hydra-awsbatch
# A current pip: older resolvers backtrack for a long time over boto3, botocore and aiobotocore.
RUN python -m pip install --no-cache-dir pip==26.3

# Dependencies first, from the package metadata alone: a code change does not reinstall them.
COPY setup.py pyproject.toml README.md ./
COPY hydra_plugins/hydra_awsbatch_launcher/__init__.py hydra_plugins/hydra_awsbatch_launcher/__init__.py
# DL3013 (pin versions): this installs the project itself; its dependencies are bounded in setup.py.
# hadolint ignore=DL3013
RUN python -m pip install --no-cache-dir ".[example]" && python -m pip uninstall --yes hydra-awsbatch-launcher

# The app's own code is not in the image: each job brings it in its code package.
COPY hydra_plugins/ hydra_plugins/
COPY container_shell_script.sh ./
RUN python -m pip install --no-cache-dir --no-deps . && chmod 0755 container_shell_script.sh

USER 10001
WORKDIR /home/app
# Batch jobs are watched by Batch itself; a container health check has nothing to add.
HEALTHCHECK NONE
ENTRYPOINT ["/opt/hydra-awsbatch/container_shell_script.sh"]
