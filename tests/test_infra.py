"""Deployment files: the compose stack, the Azure Bicep and cloud-init, the Helm values.

Offline checks only: the compose specification's JSON schema, checkov on the Bicep, cloud-init's own schema
validation, and assertions on the parsed files for the lock-down properties the schemas cannot express.
checkov and cloud-init live in .venv-infra (infra/tools/setup.sh, `make infra-tools`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "infra" / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
CADDYFILE = COMPOSE_DIR / "Caddyfile"
BACKUP_SH = COMPOSE_DIR / "backup" / "backup.sh"
AZURE_DIR = ROOT / "infra" / "azure"
BICEP = AZURE_DIR / "main.bicep"
CLOUD_INIT = AZURE_DIR / "cloud-init.yaml"
PARAMS_EXAMPLE = AZURE_DIR / "main.parameters.example.json"
HELM_VALUES = ROOT / "infra" / "helm" / "values.yaml"
WORKER_PDBS = ROOT / "infra" / "helm" / "worker-pdbs.yaml"
INFRA_BIN = ROOT / ".venv-infra" / "bin"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY$", re.IGNORECASE)
WORKER_SERVICES = {
    "windmill_worker": "default",
    "windmill_worker_llm": "llm",
    "windmill_worker_native": "native",
}


def infra_tool(name: str) -> Path:
    """A validator from .venv-infra; missing fails in CI (CI=true) and skips elsewhere with the fix."""
    path = INFRA_BIN / name
    if not path.exists():
        message = f"{path} is missing: run `make infra-tools` (bash infra/tools/setup.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(command: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=120, **kwargs
    )


def checkov(directory: Path, framework: str) -> dict:
    """checkov's JSON report; BC_SKIP_MAPPING and --skip-download keep it offline (no platform calls)."""
    completed = run(
        [infra_tool("checkov"), "-d", directory, "--framework", framework, "-o", "json", "--skip-download"],
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert completed.stdout.strip(), completed.stderr
    report = json.loads(completed.stdout)
    return report[0] if isinstance(report, list) else report


# ---------------------------------------------------------------------------------------------------------------
# compose


def strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [item for key, value in node.items() for item in strings(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [item for index, value in enumerate(node) for item in strings(value, f"{path}[{index}]")]
    return [(path, node)] if isinstance(node, str) else []


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def compose_values(text: str) -> str:
    """Every string value of the compose file (what compose interpolates; comments are not), one per line."""
    return "\n".join(value for _, value in strings(yaml.safe_load(text)))


def compose_variables(text: str) -> dict[str, set[str]]:
    """Each interpolated variable with the operators it is used with ('' for a bare ${VAR})."""
    found: dict[str, set[str]] = {}
    for match in INTERPOLATION.finditer(compose_values(text)):
        found.setdefault(match.group(1), set()).add(match.group(2) or "")
    return found


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: str(value) for key, value in env.items()}


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    completed = run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", COMPOSE])
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["db"]["ports"] = "5432:5432"  # must be a list
    broken["services"]["caddy"]["restart"] = ["always"]  # must be a string
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    completed = run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", path])
    assert completed.returncode != 0
    assert "ports" in completed.stdout and "restart" in completed.stdout


def test_only_caddy_publishes_ports_and_only_80_and_443(services: dict[str, dict]) -> None:
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert publishing == {"caddy"}
    published = set()
    for entry in services["caddy"]["ports"]:
        host, _, container = str(entry).rpartition(":")
        published.add((host, container))
    assert published == {("80", "80"), ("443", "443")}


def test_postgres_is_reachable_only_on_the_internal_network(compose: dict, services: dict[str, dict]) -> None:
    db = services["db"]
    assert "ports" not in db and "expose" not in db
    assert db["networks"] == ["data"]
    assert compose["networks"]["data"]["internal"] is True
    assert "data" not in services["caddy"]["networks"]


def test_every_service_has_a_restart_policy_and_cpu_and_memory_limits(services: dict[str, dict]) -> None:
    for name, service in services.items():
        assert service.get("restart") in {"always", "unless-stopped"}, name
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), f"{name} has no cpu/memory limits"


def test_services_other_than_workers_have_healthchecks(services: dict[str, dict]) -> None:
    for name, service in services.items():
        if name not in WORKER_SERVICES:
            test = service.get("healthcheck", {}).get("test")
            assert test and not service["healthcheck"].get("disable"), f"{name} has no healthcheck"


def test_images_are_pinned_and_windmill_matches_the_cli_version(services: dict[str, dict]) -> None:
    cli_version = json.loads((ROOT / "package.json").read_text())["devDependencies"]["windmill-cli"]
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag not in {"", "latest", "main"}, f"{name}: {image} is not pinned"
        if "windmill-labs/windmill" in repository:
            assert tag == cli_version, f"{name} runs Windmill {tag}, the CLI is {cli_version}"
    assert {name for name, s in services.items() if "windmill-labs" in s["image"]} == {
        "windmill_server",
        *WORKER_SERVICES,
    }


def test_no_literal_credentials_every_secret_comes_from_a_required_variable(
    services: dict[str, dict],
) -> None:
    text = COMPOSE.read_text()
    assert not [path for path, value in strings(yaml.safe_load(text)) if "changeme" in value.lower()]
    variables = compose_variables(text)
    for secret in ("POSTGRES_PASSWORD", "SUPERADMIN_SECRET"):
        assert variables.get(secret) == {":?"}, f"{secret} must always be ${{{secret}:?...}}"
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), (
                    f"{name}.{key} is not a required variable"
                )
            if "://" in value and "@" in value:
                userinfo = value.split("://", 1)[1].split("@", 1)[0]
                password = userinfo.partition(":")[2]
                assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", password), (
                    f"{name}.{key} embeds a password"
                )


def test_env_example_documents_exactly_the_variables_compose_uses() -> None:
    used = set(compose_variables(COMPOSE.read_text()))
    documented = env_example()
    assert set(documented) == used
    # Required variables have no value in the example: nothing real is committed, nothing usable by accident.
    for name, operators in compose_variables(COMPOSE.read_text()).items():
        if ":?" in operators:
            assert documented[name] == "", f".env.example gives {name} a value"


def test_defaults_in_env_example_equal_the_defaults_in_compose() -> None:
    documented = env_example()
    for match in INTERPOLATION.finditer(compose_values(COMPOSE.read_text())):
        name, operator, default = match.groups()
        if operator == ":-":
            assert documented[name] == default, name


def test_worker_groups_and_the_llm_tag(services: dict[str, dict]) -> None:
    groups = {name: environment(services[name]) for name in WORKER_SERVICES}
    for name, group in WORKER_SERVICES.items():
        assert groups[name]["WORKER_GROUP"] == group
        assert groups[name]["MODE"] == "worker"
    assert groups["windmill_worker_llm"]["WORKER_TAGS"].split(",") == ["llm"]
    assert groups["windmill_worker_native"]["NUM_WORKERS"] == "8"
    assert "llm" in environment(services["windmill_server"])["CUSTOM_TAGS"].split(",")
    documented = env_example()
    assert int(documented["LLM_WORKER_REPLICAS"]) > int(documented["DEFAULT_WORKER_REPLICAS"])
    assert services["windmill_worker_llm"]["deploy"]["replicas"] == "${LLM_WORKER_REPLICAS:-6}"


def script_tags() -> dict[str, str]:
    tags = {}
    for path in (ROOT / "f").rglob("*.script.yaml"):
        tag = (yaml.safe_load(path.read_text()) or {}).get("tag")
        if tag:
            tags[str(path.relative_to(ROOT))] = tag
    return tags


def test_every_script_tag_is_served_by_a_compose_and_a_helm_worker_group(services: dict[str, dict]) -> None:
    compose_tags = {
        tag
        for name in WORKER_SERVICES
        for tag in environment(services[name]).get("WORKER_TAGS", "").split(",")
        if tag
    }
    helm = yaml.safe_load(HELM_VALUES.read_text())
    helm_tags = {
        env["value"]
        for group in helm["windmill"]["workerGroups"]
        for env in group.get("extraEnv", [])
        if env["name"] == "WORKER_TAGS"
    }
    for script, tag in script_tags().items():
        assert tag in compose_tags, f"{script} has tag {tag!r}, which no compose worker group serves"
        assert tag in helm_tags, f"{script} has tag {tag!r}, which no helm worker group serves"
    assert "llm" in compose_tags and "llm" in helm_tags


def test_caddy_serves_the_domain_from_env_and_proxies_to_the_server(services: dict[str, dict]) -> None:
    caddyfile = CADDYFILE.read_text()
    placeholders = set(re.findall(r"\{\$([A-Z_]+)\}", caddyfile))
    assert placeholders == {"WINDMILL_DOMAIN", "ACME_EMAIL"}
    assert placeholders <= set(environment(services["caddy"]))
    assert re.search(r"^\{\$WINDMILL_DOMAIN\} \{$", caddyfile, re.MULTILINE)
    assert "reverse_proxy windmill_server:8000" in caddyfile
    assert environment(services["windmill_server"])["BASE_URL"].startswith("https://${WINDMILL_DOMAIN")


def test_backup_script_parses_and_the_service_uses_its_commands(services: dict[str, dict]) -> None:
    assert run(["sh", "-n", BACKUP_SH]).returncode == 0
    backup = services["backup"]
    commands = set(re.findall(r"^\s+([a-z]+)\)", BACKUP_SH.read_text(), re.MULTILINE))
    assert {"loop", "now", "list", "restore", "health"} <= commands
    assert backup["command"][0] in commands
    assert backup["healthcheck"]["test"][-1] in commands
    assert environment(backup)["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_backup_script_refuses_to_restore_over_the_live_database(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PGHOST": "db",
        "PGUSER": "u",
        "PGDATABASE": "windmill",
        "PGPASSWORD": "p",
        "AZURE_STORAGE_ACCOUNT": "acct",
        "PATH": os.environ["PATH"],
    }
    completed = run(["sh", BACKUP_SH, "restore", "windmill/x.dump", "windmill"], env=env, cwd=tmp_path)
    assert completed.returncode == 2
    assert "refusing to restore over the live database" in completed.stderr


# ---------------------------------------------------------------------------------------------------------------
# Azure: Bicep and cloud-init


@pytest.fixture(scope="module")
def bicep() -> str:
    return BICEP.read_text()


def bicep_resource(text: str, symbol: str) -> str:
    """The text of one `resource <symbol> ... = { ... }` block (braces balanced)."""
    start = text.index(f"resource {symbol} ")
    depth = 0
    for index in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start : index + 1]
    raise AssertionError(f"unbalanced resource {symbol}")


def test_vm_is_ssh_key_only_ubuntu_lts_with_a_system_identity(bicep: str) -> None:
    vm = bicep_resource(bicep, "vm")
    assert "disablePasswordAuthentication: true" in vm
    assert "adminPassword" not in bicep
    assert "identity: { type: 'SystemAssigned' }" in vm
    assert re.search(r"offer: 'ubuntu-\d\d_04-lts'", vm)
    assert "customData: base64(cloudInit)" in vm


def nsg_rules(bicep: str) -> dict[str, dict[str, str]]:
    rules = {}
    for block in re.findall(
        r"\{\s*(?://[^\n]*\n\s*)?name: '([^']+)'\s*properties: \{(.*?)\}", bicep_resource(bicep, "nsg"), re.S
    ):
        name, body = block
        rules[name] = dict(re.findall(r"(\w+): ('[^']*'|\w+)", body))
    return rules


def test_nsg_opens_443_and_80_to_the_internet_and_ssh_only_to_admin_cidr(bicep: str) -> None:
    rules = nsg_rules(bicep)
    allowed = {
        (rule["destinationPortRange"], rule["sourceAddressPrefix"])
        for rule in rules.values()
        if rule["access"] == "'Allow'" and rule["direction"] == "'Inbound'"
    }
    assert allowed == {("'443'", "'Internet'"), ("'80'", "'Internet'"), ("'22'", "adminCidr")}
    assert "param adminCidr string" in bicep


def test_storage_is_private_tls12_https_only_keyless_and_limited_to_the_vm_subnet(bicep: str) -> None:
    storage = bicep_resource(bicep, "storage")
    for setting in (
        "allowBlobPublicAccess: false",
        "minimumTlsVersion: 'TLS1_2'",
        "supportsHttpsTrafficOnly: true",
        "allowSharedKeyAccess: false",
        "defaultAction: 'Deny'",
    ):
        assert setting in storage, setting
    assert "id: '${vnet.id}/subnets/${subnetName}'" in storage
    assert "service: 'Microsoft.Storage'" in bicep_resource(bicep, "vnet")
    assert "name: 'matters'" in bicep_resource(bicep, "mattersContainer")
    assert "publicAccess: 'None'" in bicep_resource(bicep, "mattersContainer")


def test_vm_identity_gets_storage_blob_data_contributor_on_the_account(bicep: str) -> None:
    assignment = bicep_resource(bicep, "vmBlobAccess")
    assert "var blobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'" in bicep
    assert "scope: storage" in assignment
    assert "principalId: vm.identity.principalId" in assignment
    assert "'Microsoft.Authorization/roleDefinitions', blobDataContributorRoleId" in assignment


def test_parameters_example_names_exactly_the_bicep_parameters(bicep: str) -> None:
    declared = set(re.findall(r"^param (\w+) ", bicep, re.MULTILINE))
    example = json.loads(PARAMS_EXAMPLE.read_text())["parameters"]
    assert set(example) == declared - {"location"}
    required = {name for name in declared if not re.search(rf"^param {name} \w+ =", bicep, re.MULTILINE)}
    assert required <= set(example)


def rendered_cloud_init(bicep: str) -> dict:
    """cloud-init.yaml as main.bicep hands it to the VM: its replace() chain applied, in Python."""
    text = CLOUD_INIT.read_text()
    values = {
        "windmillDomain": "windmill.example.com",
        "acmeEmail": "ops@example.com",
        "storageAccountName": "mfacct",
    }
    steps = re.findall(
        r"^var \w+ = replace\((\w+|loadTextContent\('[^']+'\)), '(__\w+__)', (.+)\)$", bicep, re.MULTILINE
    )
    assert len(steps) == len(set(re.findall(r"__[A-Z0-9_]+__", text)))
    for _, placeholder, value in steps:
        if file := re.fullmatch(r"loadFileAsBase64\('([^']+)'\)", value):
            replacement = base64.b64encode((AZURE_DIR / file.group(1)).read_bytes()).decode()
        else:
            replacement = values[value]
        assert placeholder in text, placeholder
        text = text.replace(placeholder, replacement)
    assert not re.search(r"__[A-Z0-9_]+__", text)
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def test_cloud_init_writes_the_compose_stack_byte_for_byte(bicep: str) -> None:
    files = {entry["path"]: entry for entry in rendered_cloud_init(bicep)["write_files"]}
    for source, target in {
        COMPOSE: "docker-compose.yml",
        CADDYFILE: "Caddyfile",
        COMPOSE_DIR / "backup" / "Dockerfile": "backup/Dockerfile",
        BACKUP_SH: "backup/backup.sh",
    }.items():
        entry = files[f"/opt/matterflow/compose/{target}"]
        assert entry["encoding"] == "b64"
        assert base64.b64decode(entry["content"]) == source.read_bytes(), target
    assert files["/opt/matterflow/compose/backup/backup.sh"]["permissions"] == "0755"


def test_cloud_init_env_supplies_every_required_compose_variable_and_generates_the_secrets(
    bicep: str,
) -> None:
    config = rendered_cloud_init(bicep)
    files = {entry["path"]: entry["content"] for entry in config["write_files"]}
    params = dict(line.split("=", 1) for line in files["/opt/matterflow/compose/.env.params"].splitlines())
    generator = files["/usr/local/sbin/matterflow-env"]
    generated = set(re.findall(r'echo "([A-Z_]+)=\$\(openssl rand -hex 32\)"', generator))
    assert generated == {"POSTGRES_PASSWORD", "SUPERADMIN_SECRET"}
    assert "umask 077" in generator and "[ -f .env ] && exit 0" in generator
    required = {name for name, ops in compose_variables(COMPOSE.read_text()).items() if ":?" in ops}
    assert set(params) | generated == required
    assert not generated & set(params)


def test_cloud_init_starts_the_stack_as_a_systemd_unit_with_docker_installed(bicep: str) -> None:
    config = rendered_cloud_init(bicep)
    assert {"docker.io", "docker-compose-v2"} <= set(config["packages"])
    assert config["ssh_pwauth"] is False
    unit = next(
        e["content"] for e in config["write_files"] if e["path"].endswith("matterflow-windmill.service")
    )
    assert "WorkingDirectory=/opt/matterflow/compose" in unit
    assert re.search(r"^ExecStart=/usr/bin/docker compose up -d", unit, re.MULTILINE)
    assert "WantedBy=multi-user.target" in unit
    assert "systemctl enable --now matterflow-windmill.service" in config["runcmd"]


@pytest.mark.infra
@pytest.mark.slow
def test_checkov_passes_the_bicep_with_reasons_for_every_skip() -> None:
    report = checkov(AZURE_DIR, "bicep")
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 10
    assert summary["failed"] == 0, [c["check_id"] for c in report["results"]["failed_checks"]]
    assert summary["passed"] > 0
    for skipped in report["results"]["skipped_checks"]:
        reason = (skipped["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) > 30, f"{skipped['check_id']} is skipped without a reason"


@pytest.mark.infra
@pytest.mark.slow
def test_checkov_rejects_a_weakened_bicep(tmp_path: Path) -> None:
    weakened = (
        BICEP.read_text()
        .replace("allowBlobPublicAccess: false", "allowBlobPublicAccess: true")
        .replace("minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'")
    )
    (tmp_path / "main.bicep").write_text(weakened)
    report = checkov(tmp_path, "bicep")
    failed = {check["check_id"] for check in report["results"]["failed_checks"]}
    assert {"CKV_AZURE_44", "CKV_AZURE_190"} & failed, failed


@pytest.mark.infra
@pytest.mark.slow
def test_cloud_init_schema_accepts_the_config_and_rejects_a_broken_one(tmp_path: Path) -> None:
    tool = infra_tool("cloud-init")
    completed = run([tool, "schema", "--config-file", CLOUD_INIT])
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Valid cloud-config" in completed.stdout
    broken = tmp_path / "cloud-init.yaml"
    broken.write_text(CLOUD_INIT.read_text().replace("ssh_pwauth: false", "ssh_pwauth: [no]"))
    completed = run([tool, "schema", "--config-file", broken])
    assert completed.returncode != 0
    assert "ssh_pwauth" in completed.stdout + completed.stderr


# ---------------------------------------------------------------------------------------------------------------
# Helm


@pytest.fixture(scope="module")
def helm() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def test_helm_values_are_ha_with_external_postgres(helm: dict) -> None:
    windmill = helm["windmill"]
    assert helm["postgresql"]["enabled"] is False
    assert windmill["appReplicas"] >= 2
    assert windmill["app"]["podDisruptionBudget"]["enabled"] is True
    assert windmill["databaseUrlSecretName"] and "databaseUrl" not in windmill
    assert windmill["baseProtocol"] == "https"
    assert helm["ingress"]["enabled"] is True
    assert helm["ingress"]["tls"][0]["hosts"] == [windmill["baseDomain"]]
    assert helm["ingress"]["tls"][0]["secretName"]


def test_helm_values_hold_no_literal_secret(helm: dict) -> None:
    assert "postgres://" not in HELM_VALUES.read_text().replace("# postgres://", "")
    for path, _ in strings(helm):
        assert not re.search(r"password|licenseKey|scimToken", path, re.IGNORECASE), path
    for env in helm["windmill"]["app"]["extraEnv"]:
        if SECRET_NAME.search(env["name"]):
            assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"], env["name"]


def test_helm_worker_groups_have_replicas_and_limits(helm: dict) -> None:
    groups = {group["name"]: group for group in helm["windmill"]["workerGroups"]}
    assert set(groups) == {"default", "llm", "native"}
    for name, group in groups.items():
        assert group["replicas"] >= 1, name
        limits = group["resources"]["limits"]
        assert limits.get("cpu") and limits.get("memory"), name
    assert groups["llm"]["replicas"] > groups["default"]["replicas"]
    native_env = {env["name"]: env["value"] for env in groups["native"]["extraEnv"]}
    assert native_env["NUM_WORKERS"] == "8"


def test_helm_runs_the_same_windmill_release_as_compose(helm: dict, services: dict[str, dict]) -> None:
    assert services["windmill_server"]["image"].endswith(f":{helm['windmill']['tag']}")


def test_every_helm_worker_group_has_a_pod_disruption_budget(helm: dict) -> None:
    budgets = list(yaml.safe_load_all(WORKER_PDBS.read_text()))
    covered = set()
    for budget in budgets:
        assert budget["apiVersion"] == "policy/v1" and budget["kind"] == "PodDisruptionBudget"
        labels = budget["spec"]["selector"]["matchLabels"]
        assert labels["app"] == "windmill-workers"
        assert "maxUnavailable" in budget["spec"] or "minAvailable" in budget["spec"]
        covered.add(labels["workerGroup"])
    assert covered == {group["name"] for group in helm["windmill"]["workerGroups"]}


def test_infra_tools_setup_is_pinned_and_isolated() -> None:
    pins = [
        line
        for line in (ROOT / "infra" / "tools" / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+\-]+", line) for line in pins), pins
    assert any(line.startswith("checkov==") for line in pins)
    setup = (ROOT / "infra" / "tools" / "setup.sh").read_text()
    assert ".venv-infra" in setup and "dpkg-deb -x" in setup
    assert shutil.which("sh")
