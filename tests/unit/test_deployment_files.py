"""The deployment files keep their promises: secrets from .env, one published port, logins."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
NAME = r"[A-Za-z_][A-Za-z0-9_]*"
SECRET_KEY = re.compile(r"PASS|SECRET|TOKEN|AUTH", re.IGNORECASE)
SECRET_FLAGS = ("--requirepass", "--basic-auth", "--basic_auth", "--password")


class Missing(Exception):
    """A `${VAR:?message}` whose variable is unset: compose refuses to start."""


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` (nested too) and `$$`."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_expand(text[i + 2:end], env))
            i = end + 1
        elif match := re.match(rf"\$({NAME})", text[i:]):
            out.append(env.get(match.group(1), ""))
            i += match.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise AssertionError(f"unclosed ${{ in {text!r}")


def _expand(expression: str, env: dict[str, str]) -> str:
    match = re.fullmatch(rf"({NAME})(?:(:?[-?+])(.*))?", expression, re.DOTALL)
    assert match, f"not compose interpolation: ${{{expression}}}"
    name, operator, argument = match.groups()
    value = env.get(name)
    present = value is not None and (value != "" or not (operator or "").startswith(":"))
    if operator is None:
        return value or ""
    if operator.endswith("-"):
        return value if present else interpolate(argument, env)
    if operator.endswith("?"):
        if not present:
            raise Missing(f"{name}: {argument}")
        return value
    return interpolate(argument, env) if present else ""


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def referenced(pattern: str) -> set[str]:
    return set(re.findall(pattern, (ROOT / "docker-compose.yml").read_text()))


# Every variable set, each password to a value of its own: a resolved secret must be one.
REQUIRED = referenced(rf"\$\{{({NAME}):\?")
PASSWORDS = {name: f"from-env-{name}" for name in referenced(rf"\$\{{({NAME}_PASSWORD)\b")}
RESOLVED = resolve(SERVICES, {**dict.fromkeys(REQUIRED, "x"), **PASSWORDS})


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def secrets_in(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, secret) for every password-like value in the service's env and command."""
    found = []
    for key, value in environment(service).items():
        if SECRET_KEY.search(key):
            found.append((key, value.split(":", 1)[-1]))  # a `user:password` pair or a password
        elif (url := urlsplit(value)).password is not None:
            found.append((f"{key} (URL)", url.password))
    args = command(service)
    for flag, value in zip(args, args[1:], strict=False):
        if flag in SECRET_FLAGS:
            found.append((flag, value.split(":", 1)[-1]))
    return found


def saga_services() -> list[str]:
    return [name for name, service in SERVICES.items() if command(service)[:1] == ["saga"]]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_password_comes_from_the_environment(name: str) -> None:
    for where, secret in secrets_in(RESOLVED[name]):
        assert secret in PASSWORDS.values(), (
            f"{name}: {where} is a literal, not a ${{..._PASSWORD}} from .env: {secret!r}")


def test_the_secrets_are_found_where_they_are_used() -> None:
    """The check above looks in the right places: each password is used and seen there."""
    seen = {secret for name in SERVICES for _, secret in secrets_in(RESOLVED[name])}
    assert seen == set(PASSWORDS.values())
    assert {"POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "FLOWER_PASSWORD"} <= set(PASSWORDS)
    assert "guest" not in str(SERVICES), "RabbitMQ's guest login, known to everyone"


@pytest.mark.parametrize("password", sorted(PASSWORDS))
def test_compose_refuses_to_start_without_each_password(password: str) -> None:
    env = {**dict.fromkeys(REQUIRED, "x"), **PASSWORDS}
    del env[password]
    with pytest.raises(Missing, match=password):
        resolve(SERVICES, env)


def test_env_example_names_every_required_variable_and_holds_no_secret() -> None:
    example = (ROOT / ".env.example").read_text()
    assigned = dict(re.findall(rf"^({NAME})=(.*)$", example, re.MULTILINE))
    assert REQUIRED <= set(assigned), f"missing from .env.example: {REQUIRED - set(assigned)}"
    assert {name: assigned[name] for name in PASSWORDS} == dict.fromkeys(PASSWORDS, "")


def test_env_is_ignored_by_git_and_by_the_image_build() -> None:
    def lines(name: str) -> set[str]:
        return {line.strip() for line in (ROOT / name).read_text().splitlines()}

    assert ".env" in lines(".gitignore")
    assert ".env" in lines(".dockerignore")


def test_only_the_api_publishes_a_port_and_opt_in_services_only_on_localhost() -> None:
    default = {name for name, service in SERVICES.items() if not service.get("profiles")}
    assert {name for name in default if SERVICES[name].get("ports")} == {"api"}
    for name, service in SERVICES.items():
        if service.get("profiles"):
            for port in RESOLVED[name].get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to all"


def test_flower_requires_a_login() -> None:
    flower = RESOLVED["flower"]
    logins = [value for key, value in environment(flower).items()
              if key in ("SAGA_FLOWER_BASIC_AUTH", "FLOWER_BASIC_AUTH")]
    args = command(flower)
    logins += [value for flag, value in zip(args, args[1:], strict=False)
               if flag in ("--basic-auth", "--basic_auth")]
    assert logins, "Flower runs without --basic-auth or SAGA_FLOWER_BASIC_AUTH"
    user, _, password = logins[0].partition(":")
    assert user and password == PASSWORDS["FLOWER_PASSWORD"]


def test_rabbitmq_has_its_own_user_not_guest() -> None:
    env = environment(RESOLVED["rabbitmq"])
    assert env.get("RABBITMQ_DEFAULT_USER") not in (None, "", "guest")
    assert env.get("RABBITMQ_DEFAULT_PASS") == PASSWORDS["RABBITMQ_PASSWORD"]


def test_services_running_saga_code_share_one_image_and_one_environment() -> None:
    names = saga_services()
    assert {"migrate", "api", "worker", "sweeper", "flower"} <= set(names)
    for name in names:
        assert (SERVICES[name].get("image"), SERVICES[name].get("build")) == (
            SERVICES["api"]["image"], SERVICES["api"]["build"]), name
        env = environment(SERVICES[name])
        if name == "flower":
            env.pop("SAGA_FLOWER_BASIC_AUTH")  # its own login, beside the shared settings
        assert env == environment(SERVICES["api"]), name


def test_the_compose_api_runs_under_gunicorn() -> None:
    args = command(SERVICES["api"])
    assert args[:2] == ["saga", "api"] or args[0] == "gunicorn", args


# -- the image ---------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    rows = [line.strip() for line in text.splitlines()]
    return [(row.split(None, 1)[0].upper(), row.split(None, 1)[1])
            for row in rows if row and not row.startswith("#")]


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [args for instruction, args in dockerfile() if instruction == "USER"]
    assert users, "no USER: the container runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_the_image_serves_the_api_under_gunicorn() -> None:
    cmd = [args for instruction, args in dockerfile() if instruction in ("CMD", "ENTRYPOINT")]
    assert cmd and (cmd[-1].startswith('["saga", "api"') or "gunicorn" in cmd[-1]), cmd
    installs = [args for instruction, args in dockerfile()
                if instruction == "RUN" and "pip install" in args]
    assert installs and all(" -e " not in f" {args} " for args in installs), "not editable"
    assert any("[deploy]" in args for args in installs), "gunicorn is in the deploy extra"


def test_the_image_copies_every_source_the_package_maps_and_the_examples() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = [args.split() for instruction, args in dockerfile() if instruction == "COPY"]
    sources = {part for args in copied for part in args[:-1]}
    assert {"saga", "examples", *setuptools["package-dir"].values()} <= sources
    env = " ".join(args for instruction, args in dockerfile() if instruction == "ENV")
    workdirs = [args for instruction, args in dockerfile() if instruction == "WORKDIR"]
    assert f"PYTHONPATH={workdirs[-1]}" in env, "examples/ must be importable at run time"


def test_every_python_package_on_disk_is_in_the_wheel() -> None:
    """A package missing from pyproject's list installs nowhere: the image would break."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"saga": "saga", **{folder: name for name, folder in setuptools["package-dir"].items()}}
    on_disk = set()
    for folder, package in roots.items():
        for source in (ROOT / folder).rglob("*.py"):
            parts = source.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((package, *parts)))
    assert on_disk <= set(setuptools["packages"]), (
        f"add to [tool.setuptools] packages: {sorted(on_disk - set(setuptools['packages']))}")
