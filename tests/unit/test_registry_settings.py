"""Unit tests for the saga registry (versions, lookup, describe) and Settings.from_env."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
import uuid

import pytest

from saga.definitions import Parallel, Saga, Step
from saga.errors import DefinitionError, SagaError, UnknownSaga
from saga.registry import Registry
from saga.settings import Settings


def act(ctx):
    return None


def undo(ctx):
    return None


def orders(version: int, *extra: Step) -> Saga:
    return Saga("orders", version=version,
                steps=[Step("reserve", act, compensate=undo), Step("charge", act), *extra])


SIGNUP = Saga("signup", steps=[Step("create", act), Parallel(Step("mail", act), Step("crm", act))])


# -- Registry ------------------------------------------------------------------------------

@pytest.mark.parametrize("added", [(1, 2, 3), (3, 1, 2), (2, 3, 1)])
def test_new_runs_get_the_newest_version_whatever_the_load_order(added):
    registry = Registry(orders(v) for v in added)
    assert registry.get("orders").version == 3


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_pinned_version_is_found_by_number(version):
    registry = Registry([orders(1), orders(2), orders(3), SIGNUP])
    saga = registry.get("orders", version)
    assert (saga.name, saga.version) == ("orders", version)


def test_an_unknown_saga_name_raises_unknown_saga_naming_it():
    registry = Registry([SIGNUP])
    with pytest.raises(UnknownSaga, match="'refunds'"):
        registry.get("refunds")
    with pytest.raises(UnknownSaga, match="'refunds'"):
        registry.get("refunds", 1)
    with pytest.raises(UnknownSaga):
        Registry().get("signup")


def test_a_version_no_longer_loaded_raises_unknown_saga_listing_the_loaded_ones():
    registry = Registry([orders(2), orders(4)])
    with pytest.raises(UnknownSaga) as caught:
        registry.get("orders", 3)
    message = str(caught.value)
    assert "'orders'" in message and "version 3" in message and "[2, 4]" in message


def test_unknown_saga_is_a_saga_error():
    assert issubclass(UnknownSaga, SagaError)


def test_loading_the_same_definition_twice_is_harmless():
    """Given a module imported twice (the same shape under the same version), the registry
    keeps one entry."""
    registry = Registry([orders(1), orders(1)])
    assert [s.version for s in registry] == [1]


def test_the_same_version_defined_differently_is_refused():
    registry = Registry([orders(1)])
    with pytest.raises(DefinitionError) as caught:
        registry.add(orders(1, Step("ship", act)))
    assert "'orders'" in str(caught.value) and "version 1" in str(caught.value)
    assert registry.get("orders", 1).shape_hash == orders(1).shape_hash


def test_iteration_yields_every_version_of_every_saga_oldest_first():
    registry = Registry([orders(2), SIGNUP, orders(1)])
    assert [(s.name, s.version) for s in registry] == [("orders", 1), ("orders", 2),
                                                       ("signup", 1)]


def test_describe_lists_sagas_by_name_with_versions_and_runs_in_flight():
    registry = Registry([SIGNUP, orders(2), orders(1, Step("ship", act))])
    described = registry.describe({("orders", 1): 4})
    assert [d["name"] for d in described] == ["orders", "signup"]
    first = described[0]
    assert first["latest"] == 2
    assert [(v["version"], v["runs_in_flight"]) for v in first["versions"]] == [(1, 4), (2, 0)]
    assert [s["name"] for s in first["versions"][0]["steps"]] == ["reserve", "charge", "ship"]
    assert first["versions"][1] == dict(orders(2).describe(), runs_in_flight=0)
    assert described[1]["versions"][0]["runs_in_flight"] == 0


def test_describe_of_an_empty_registry_is_empty():
    assert Registry().describe() == []


@pytest.fixture
def module_factory(tmp_path, monkeypatch):
    """Write throwaway modules on sys.path; forget them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def make(source: str) -> str:
        name = f"sagas_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        made.append(name)
        return name

    yield make
    for name in made:
        sys.modules.pop(name, None)


def test_from_modules_loads_every_saga_defined_at_module_top_level(module_factory):
    name = module_factory("""
        from saga import Saga, Step

        def work(ctx):
            return None

        first = Saga("first", steps=[Step("a", work)])
        first_v2 = Saga("first", version=2, steps=[Step("a", work), Step("b", work)])
        second = Saga("second", steps=[Step("x", "json:dumps")])
        not_a_saga = [first]
    """)
    registry = Registry.from_modules([name])
    assert sorted((s.name, s.version) for s in registry) == [
        ("first", 1), ("first", 2), ("second", 1)]


def test_from_modules_refuses_a_module_without_sagas(module_factory):
    name = module_factory("VALUE = 1\n")
    with pytest.raises(DefinitionError, match=name):
        Registry.from_modules([name])


def test_from_modules_fails_on_a_bad_definition_naming_the_step(module_factory):
    name = module_factory("""
        from saga import Saga, Step
        broken = Saga("broken", steps=[Step("ship", "no_such_module_here:create")])
    """)
    with pytest.raises(DefinitionError, match="'ship'"):
        Registry.from_modules([name])


# -- Settings --------------------------------------------------------------------------------

def test_settings_default_to_the_embedded_stack():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url.startswith("sqlite") and settings.is_sqlite
    assert settings.broker_url == "memory://"
    assert settings.sagas == ()


@pytest.mark.parametrize(("variable", "raw", "field", "value"), [
    ("SAGA_DATABASE_URL", "postgresql+psycopg://db/saga", "database_url",
     "postgresql+psycopg://db/saga"),
    ("SAGA_BROKER_URL", "amqp://guest@rabbit//", "broker_url", "amqp://guest@rabbit//"),
    ("SAGA_SAGAS", "shop.sagas", "sagas", ("shop.sagas",)),
    ("SAGA_SAGAS", " shop.sagas , billing.sagas,, ", "sagas", ("shop.sagas", "billing.sagas")),
    ("SAGA_SAGAS", "", "sagas", ()),
    ("SAGA_LEASE_S", "12.5", "lease_s", 12.5),
    ("SAGA_LEASE_S", "20", "lease_s", 20.0),
    ("SAGA_SWEEP_INTERVAL_S", "1e-1", "sweep_interval_s", 0.1),
    ("SAGA_SWEEP_BATCH", "50", "sweep_batch", 50),
    ("SAGA_SWEEP_BATCH", " 50 ", "sweep_batch", 50),
    ("SAGA_MAX_BODY_BYTES", "2048", "max_body_bytes", 2048),
    ("SAGA_WORKER_CONCURRENCY", "8", "worker_concurrency", 8),
    ("SAGA_DEFAULT_QUEUE", "sagas-eu", "default_queue", "sagas-eu"),
])
def test_settings_read_each_variable_as_its_type(variable, raw, field, value):
    settings = Settings.from_env({variable: raw})
    assert getattr(settings, field) == value
    assert type(getattr(settings, field)) is type(value)


NUMERIC = [f for f in dataclasses.fields(Settings) if str(f.type) in ("int", "float")]


@pytest.mark.parametrize("field", NUMERIC, ids=lambda f: f.name)
@pytest.mark.parametrize("raw", ["soon", "", "10s", "1,5"])
def test_a_bad_number_raises_value_error_naming_the_variable(field, raw):
    variable = f"SAGA_{field.name.upper()}"
    with pytest.raises(ValueError) as caught:
        Settings.from_env({variable: raw})
    assert variable in str(caught.value)
    assert repr(raw) in str(caught.value)


@pytest.mark.parametrize("variable", [f"SAGA_{f.name.upper()}" for f in NUMERIC
                                      if str(f.type) == "int"])
def test_a_fraction_for_an_integer_setting_is_refused(variable):
    with pytest.raises(ValueError, match=variable):
        Settings.from_env({variable: "1.5"})


@pytest.mark.parametrize(("variable", "raw"), [
    ("SAGA_LEASE_S", "nan"), ("SAGA_LEASE_S", "0"), ("SAGA_LEASE_S", "-5"),
    ("SAGA_SWEEP_INTERVAL_S", "inf"), ("SAGA_SWEEP_BATCH", "0"),
    ("SAGA_WORKER_CONCURRENCY", "-1"),
])
def test_an_impossible_number_raises_value_error_naming_the_variable(variable, raw):
    with pytest.raises(ValueError, match=variable):
        Settings.from_env({variable: raw})


def test_overrides_win_over_the_environment():
    settings = Settings.from_env({"SAGA_LEASE_S": "12", "SAGA_BROKER_URL": "redis://r"},
                                 lease_s=3.0)
    assert (settings.lease_s, settings.broker_url) == (3.0, "redis://r")


def test_variables_without_the_prefix_or_unknown_names_are_ignored():
    environ = {"DATABASE_URL": "postgresql://x", "SAGA_NO_SUCH_SETTING": "1",
               "saga_database_url": "postgresql://y", "SAGADATABASE_URL": "postgresql://z"}
    assert Settings.from_env(environ) == Settings()


def test_an_explicit_environ_is_the_only_source(monkeypatch):
    monkeypatch.setenv("SAGA_LEASE_S", "99")
    assert Settings.from_env({}).lease_s == Settings().lease_s
    assert Settings.from_env().lease_s == 99.0


def test_settings_are_frozen_and_with_returns_a_changed_copy():
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lease_s = 1.0  # type: ignore[misc]
    changed = settings.with_(database_url="postgresql+psycopg://db/saga")
    assert changed.database_url == "postgresql+psycopg://db/saga" and not changed.is_sqlite
    assert settings.is_sqlite and changed.lease_s == settings.lease_s


# -- URLs: what works, and a clear refusal for what cannot ---------------------------------

@pytest.mark.parametrize(("raw", "used"), [
    ("postgres://saga@db/saga", "postgresql+psycopg://saga@db/saga"),
    ("postgresql://saga:pw@db:5433/saga", "postgresql+psycopg://saga:pw@db:5433/saga"),
    ("postgresql+psycopg://saga@db/saga", "postgresql+psycopg://saga@db/saga"),
    ("POSTGRES://saga@db/saga", "postgresql+psycopg://saga@db/saga"),
    ("sqlite:///saga.db", "sqlite:///saga.db"),
    ("sqlite+pysqlite:///:memory:", "sqlite+pysqlite:///:memory:"),
])
def test_postgres_urls_mean_psycopg_3(raw, used):
    """SQLAlchemy refuses postgres:// and takes postgresql:// as psycopg2 (not installed)."""
    assert Settings.from_env({"SAGA_DATABASE_URL": raw}).database_url == used
    assert Settings(database_url=raw).database_url == used


@pytest.mark.parametrize(("raw", "why"), [
    ("mysql://saga@db/saga", "database 'mysql' is not supported"),
    ("foo://bar", "database 'foo' is not supported"),
    ("garbage", "is not a URL"),
    ("", "is not a URL"),
    ("postgresql+psycopg2://saga@db/saga", "driver 'psycopg2' is not supported"),
])
def test_a_database_url_that_cannot_work_is_refused_saying_what_to_use(raw, why):
    with pytest.raises(ValueError) as caught:
        Settings.from_env({"SAGA_DATABASE_URL": raw})
    message = str(caught.value)
    assert "SAGA_DATABASE_URL" in message and why in message
    assert "postgresql://user:password@host:5432/db" in message


@pytest.mark.parametrize(("variable", "raw"), [
    ("SAGA_BROKER_URL", "sqs://key@queue"),
    ("SAGA_BROKER_URL", "kafka://broker:9092"),
    ("SAGA_BROKER_URL", "rabbit"),
    ("SAGA_BROKER_URL", ""),
    ("SAGA_RESULT_BACKEND", "nosuch://x"),
    ("SAGA_RESULT_BACKEND", "localhost:6379"),
    ("SAGA_ALERT_WEBHOOK", "hooks.example.com/x"),
    ("SAGA_ALERT_WEBHOOK", "ftp://hooks.example.com"),
])
def test_a_broker_backend_or_webhook_url_that_cannot_work_is_refused(variable, raw):
    with pytest.raises(ValueError, match=variable):
        Settings.from_env({variable: raw})


@pytest.mark.parametrize(("variable", "raw"), [
    ("SAGA_BROKER_URL", "amqp://guest:guest@rabbit:5672//"),
    ("SAGA_BROKER_URL", "pyamqp://rabbit//"),
    ("SAGA_BROKER_URL", "rediss://redis:6380/0"),
    ("SAGA_BROKER_URL", "memory://"),
    ("SAGA_RESULT_BACKEND", "redis://redis:6379/1"),
    ("SAGA_RESULT_BACKEND", "rpc://"),
    ("SAGA_RESULT_BACKEND", "db+postgresql+psycopg://saga@db/results"),
    ("SAGA_ALERT_WEBHOOK", "https://hooks.example.com/x?token=t"),
])
def test_supported_urls_are_kept_as_given(variable, raw):
    settings = Settings.from_env({variable: raw})
    assert getattr(settings, variable.removeprefix("SAGA_").lower()) == raw


# -- SAGA_SAGAS modules that fail: which module, and why -----------------------------------

def test_a_module_that_is_not_there_is_named_with_the_import_error():
    with pytest.raises(DefinitionError) as caught:
        Registry.from_modules(["no_such_saga_module_here"])
    message = str(caught.value)
    assert "'no_such_saga_module_here' cannot be imported" in message
    assert "No module named 'no_such_saga_module_here'" in message
    assert "SAGA_SAGAS" in message and "PYTHONPATH" in message


def test_a_module_whose_dependency_is_missing_names_the_dependency(module_factory):
    name = module_factory("import no_such_dependency_for_sagas\n")
    with pytest.raises(DefinitionError) as caught:
        Registry.from_modules([name])
    assert repr(name) in str(caught.value)
    assert "No module named 'no_such_dependency_for_sagas'" in str(caught.value)


def test_a_module_failing_at_import_says_how_and_where(module_factory):
    name = module_factory("""
        RATE = 1
        LIMIT = RATE / 0
    """)
    with pytest.raises(DefinitionError) as caught:
        Registry.from_modules([name])
    message = str(caught.value)
    assert repr(name) in message and "ZeroDivisionError: division by zero" in message
    assert f"{name}.py, line 3" in message


def test_a_module_with_a_syntax_error_says_where(module_factory):
    name = module_factory("def broken(:\n")
    with pytest.raises(DefinitionError) as caught:
        Registry.from_modules([name])
    assert repr(name) in str(caught.value) and "SyntaxError" in str(caught.value)
    assert f"{name}.py, line 1" in str(caught.value)


def test_a_bad_definition_names_the_module_the_saga_and_the_step(module_factory):
    name = module_factory("""
        from saga import Saga, Step
        broken = Saga("orders", version=2, steps=[Step("charge", "no_such_module_here:c")])
    """)
    with pytest.raises(DefinitionError) as caught:
        Registry.from_modules([name])
    assert f"module {name!r}: saga 'orders' v2, step 'charge': action" in str(caught.value)
