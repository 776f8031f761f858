"""Hydra's own launcher test suites, run against aws_batch_local with a local and an S3 staging area."""

from __future__ import annotations

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

from hydra_plugins.hydra_awsbatch_launcher.awsbatch_launcher import AwsBatchLocalLauncher

pytestmark = pytest.mark.integration
SUITE_BUCKET = "hydra-awsbatch-suites"
S3_STAGING = f"hydra.launcher.staging_uri=s3://{SUITE_BUCKET}/staging"


@pytest.fixture
def s3_staging(aws_env):
    """The suites' bucket on the moto server, and the environment that points boto3 at it."""
    import boto3

    s3 = boto3.client("s3")
    if SUITE_BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=SUITE_BUCKET)
    return aws_env


def test_discovery() -> None:
    assert AwsBatchLocalLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


@pytest.mark.parametrize("launcher_name, overrides", [("aws_batch_local", [])])
class TestLocalStaging(LauncherTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [("aws_batch_local", [S3_STAGING])])
@pytest.mark.usefixtures("s3_staging")
class TestS3Staging(LauncherTestSuite):
    pass


BATCHES_OF_2 = ["hydra/sweeper=basic", "hydra.sweeper.max_batch_size=2"]


@pytest.mark.parametrize("launcher_name, overrides",
                         [("aws_batch_local", BATCHES_OF_2), ("aws_batch_local", [*BATCHES_OF_2, S3_STAGING])])
@pytest.mark.usefixtures("s3_staging")
class TestBatchedSweeper(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [({}, ["-m", "hydra/launcher=aws_batch_local"])])
class TestIntegrationLocalStaging(IntegrationTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags",
                         [({}, ["-m", "hydra/launcher=aws_batch_local", S3_STAGING])])
@pytest.mark.usefixtures("s3_staging")
class TestIntegrationS3Staging(IntegrationTestSuite):
    pass
