import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent
# Read, not imported: the package imports its own modules, which a build environment may not have.
INIT = (HERE / "hydra_plugins/hydra_awsbatch_launcher/__init__.py").read_text()
VERSION = re.search(r'__version__ = "([^"]+)"', INIT)[1]

# Upper bounds sit at the newest release the tests ran on, for the libraries whose internals we patch or call
# (listed in hydra_plugins/hydra_awsbatch_launcher/_hooks.py): hydra-core, moto, torch's elastic launcher.
# tools/newest.sh tries the newest releases past them.
# What the example app (train_model.py) needs; the container image installs these too.
# s3fs's aiobotocore pins botocore to a few patch releases; boto3 follows botocore release for release. Declared
# together at the releases tested, pip resolves them at once (unbounded, it backtracks through dozens of boto3s).
S3 = ["s3fs>=2026.9,<2026.10", "aiobotocore>=3.10,<3.11", "botocore>=1.43.115,<1.43.118", "boto3>=1.43.115,<1.43.118"]
EXAMPLE = ["torch>=2.1,<2.15", "scikit-learn>=1.3", "numpy>=1.24", "fsspec>=2026.9,<2026.10", *S3]
# The thompson sweeper (hydra/sweeper=thompson): BoTorch's Gaussian processes, matplotlib for its plot.
BO = ["botorch>=0.11", "matplotlib>=3.7"]
# The local cloud (hydra-awsbatch local-cloud up): moto's server plays CloudFormation, Batch, S3, ECR and Logs.
CLOUD = ["moto[server]>=5.2.5,<=5.2.6"]  # its Batch patched (_hooks.py): tested 5.2.5-5.2.6
# The docs site (mkdocs.yml, docs/): tests/test_docs.py builds it with --strict.
DOCS = ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10"]
TEST = EXAMPLE + BO + DOCS + CLOUD + [
    "pytest>=7.4",
    "pytest-timeout>=2.2",
    "pytest-xdist>=3.5",  # the suite runs in up to 4 processes (pyproject.toml)
    "hydra-optuna-sweeper>=1.2",  # installed on the launching side only, as a user's other plugins are
    "hydra-joblib-launcher>=1.2",  # the baseline of bench/warm_workers.py
    "selenium>=4.20",  # the sweep page opened in a real headless Chromium (Debian's chromium-driver)
    "onnxruntime>=1.17",  # bench/lcbench.py: YAHPO Gym's LCBench surrogate (../shared/data/yahpo_lcbench)
    "ruff>=0.5",
]

setup(
    name="hydra-awsbatch-launcher",
    version=VERSION,
    description="Hydra launcher that runs every config of a sweep as an AWS Batch job, and a sweeper that keeps "
                "every worker busy with asynchronous Bayesian optimisation",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_namespace_packages(include=["hydra_plugins.*"]),
    # cloud/: template.yaml, Dockerfile and container_shell_script.sh (links to the repository's own), so that
    # `hydra-awsbatch local-cloud up` works from an installed package too
    package_data={"hydra_plugins.hydra_awsbatch_launcher": ["py.typed", "*.yaml", "cloud/*"]},
    install_requires=[
        "hydra-core>=1.3,<1.4",
        "boto3>=1.28",
        "cloudpickle>=2.2",
        "rich>=14.1",  # 14.1: live displays nest (the thompson sweeper's line over the launcher's)
        "pathspec>=0.12",
        "plotly>=7.1",  # the sweep page (report.html), its JavaScript inlined
    ],
    extras_require={"example": EXAMPLE, "bo": BO, "cloud": CLOUD, "docs": DOCS, "test": TEST},
    entry_points={"console_scripts": ["hydra-awsbatch = hydra_plugins.hydra_awsbatch_launcher.cli:main"]},
    classifiers=[
        "Framework :: Hydra",
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
    ],
    include_package_data=True,
)
