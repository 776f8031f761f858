"""moto's server as the local cloud runs it: moto's own, with what its Batch lacks for multi-node parallel jobs
added (patches of moto 5.2.5-5.2.6, each through a hook of _hooks.py, checked in tests/test_hooks.py and used in
tests/test_e2e.py; drop one when moto does the same):

- CloudFormation registers an AWS::Batch::JobDefinition of `Type: multinode` as one (moto registers every job
  definition as `container`, and then refuses its NodeProperties);
- DescribeJobDefinitions shows a multinode definition's `nodeProperties` (moto leaves them out);
- SubmitJob's `nodeOverrides` reach the nodes (moto drops them): `numNodes`, and each node's command and
  environment;
- every node's container gets the variables Batch gives it: AWS_BATCH_JOB_ID (JOBID#N), AWS_BATCH_JOB_NODE_INDEX,
  AWS_BATCH_JOB_NUM_NODES, AWS_BATCH_JOB_MAIN_NODE_INDEX, and on child nodes
  AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS (moto sets none of them, and on host networking an empty address):
  127.0.0.1, since every container shares the host's network. For the same reason each multi-node job gets
  ports of its own for its rendezvous and its node watch (_nodes.py), where on Batch each node has an address.

    python -m hydra_plugins.hydra_awsbatch_launcher._moto_server -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import copy
import sys
import threading

_submitting = threading.local()  # the SubmitJob request being served: its nodeOverrides


def patch() -> None:
    """moto's Batch with the patches above; fails at once, naming the hook, where this moto is not one we test."""
    from moto.batch import models

    from hydra_plugins.hydra_awsbatch_launcher import _hooks, _job, _nodes
    from hydra_plugins.hydra_awsbatch_launcher._hooks import hook

    _hooks.check(_hooks.MOTO)
    lowercase_first_key = hook("moto.batch.utils.lowercase_first_key")
    original_create = hook("moto.batch.models.JobDefinition.create_from_cloudformation_json")
    backends = hook("moto.batch.models.batch_backends")

    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        properties = cloudformation_json["Properties"]
        if properties.get("Type") != "multinode":
            return original_create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        nodes = lowercase_first_key(properties["NodeProperties"])
        nodes.update(numNodes=int(nodes["numNodes"]), mainNode=int(nodes.get("mainNode", 0)))
        return backends[account_id][region_name].register_job_definition(
            def_name=resource_name, parameters=lowercase_first_key(properties.get("Parameters", {})),
            _type="multinode", tags=lowercase_first_key(properties.get("Tags", {})),
            retry_strategy=lowercase_first_key(properties.get("RetryStrategy", {})), container_properties=None,
            node_properties=nodes, eks_properties=None, timeout=lowercase_first_key(properties.get("Timeout", {})),
            platform_capabilities=None, propagate_tags=None)

    models.JobDefinition.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)

    original_describe = hook("moto.batch.models.JobDefinition.describe")

    def describe(self):
        described = original_describe(self)
        if self.node_properties:
            described["nodeProperties"] = self.node_properties
        return described

    models.JobDefinition.describe = describe

    responses, handler = hook("moto.batch.responses.BatchResponse.submit_job")
    original_submit = getattr(responses, handler)

    def submit_job(self):
        _submitting.node_overrides = self._get_param("nodeOverrides")
        try:
            return original_submit(self)
        finally:
            _submitting.node_overrides = None

    setattr(responses, handler, submit_job)

    original_init = hook("moto.batch.models.Job.__init__")

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.node_overrides = None
        if self.job_definition.type != "multinode":
            return
        self.node_overrides = getattr(_submitting, "node_overrides", None) or {}
        if self.node_overrides.get("numNodes"):  # the job's own copy of its definition, with its node count
            self.job_definition = copy.copy(self.job_definition)
            self.job_definition.node_properties = dict(self.job_definition.node_properties,
                                                       numNodes=int(self.node_overrides["numNodes"]))
        self.node_ports = {_job.MASTER_PORT: str(_nodes.free_port()), _job.WATCH_PORT: str(_nodes.free_port())}

    models.Job.__init__ = __init__

    plain_client = hook("moto.batch.models.DockerModel.docker_client")
    hook("moto.batch.models.Job.run")  # _NodeContainers.run reads the name

    def docker_client(self):
        client = plain_client.fget(self)
        return _NodesClient(client, self) if getattr(self, "node_overrides", None) is not None else client

    models.Job.docker_client = property(docker_client)


def _targets(spec: str, num_nodes: int) -> range:
    """The node indexes of a targetNodes range ("0", "1:", ":3", "0:1")."""
    start, colon, end = spec.partition(":")
    if not colon:
        return range(int(start), int(start) + 1)
    return range(int(start or 0), int(end) + 1 if end else num_nodes)


class _NodesClient:
    """A Docker client whose `containers.run` starts a node of a multi-node job as Batch would."""

    def __init__(self, client, job):
        self._client, self.containers = client, _NodeContainers(client.containers, job)

    def __getattr__(self, name):
        return getattr(self._client, name)


class _NodeContainers:
    def __init__(self, containers, job):
        self._containers, self._job = containers, job

    def __getattr__(self, name):
        return getattr(self._containers, name)

    def run(self, **kwargs):
        job = self._job
        properties = job.job_definition.node_properties
        node, num_nodes = int(kwargs["name"].rsplit("-", 1)[1]), int(properties["numNodes"])  # moto: NAME-ID-N
        main = int(properties.get("mainNode", 0))
        env = kwargs["environment"]
        for override in job.node_overrides.get("nodePropertyOverrides") or []:
            if node in _targets(override["targetNodes"], num_nodes):
                container = override.get("containerOverrides") or {}
                if container.get("command"):
                    kwargs["command"] = container["command"]
                env.update({e["name"]: e["value"] for e in container.get("environment") or []})
        env.update(job.node_ports, AWS_BATCH_JOB_ID=f"{job.job_id}#{node}", AWS_BATCH_JOB_NODE_INDEX=str(node),
                   AWS_BATCH_JOB_NUM_NODES=str(num_nodes), AWS_BATCH_JOB_MAIN_NODE_INDEX=str(main))
        env.pop("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS", None)
        if node != main:
            env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = "127.0.0.1"
        return self._containers.run(**kwargs)


def main(argv: list[str] | None = None) -> None:
    from hydra_plugins.hydra_awsbatch_launcher._hooks import hook

    patch()
    hook("moto.server.main")(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
