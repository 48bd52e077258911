"""Test seams, each inert unless a test turns it on.

- `faults`: named crash points (`SAGA_FAULTS=after_commit:charge_card:once`) where a
  process SIGKILLs itself, to prove a crash at that point loses and doubles nothing.
- `clock`: a clock every process of a test moves forward together (`SAGA_TEST_CLOCK_FILE`).
- `dispatch`: a dispatcher that records what the engine would publish, for tests with
  no broker.
- `kit`: the saga test kit for the people who write sagas: run a saga in-process with
  injected faults (`inject`), move its clock, send it signals, and `explore` every step x
  fault against an invariant; `plugin` offers it as the pytest fixture `saga_kit`.
"""
