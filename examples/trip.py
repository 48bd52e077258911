"""A trip booking, the saga test kit's example: a seat, then a room and a car at once, then the card.

    reserve_flight → (reserve_hotel ‖ reserve_car) → charge_card

Its world is `examples.travel` (in-memory services); its rule, `nothing_held_unless_booked`:
once a run is over, a trip holds one seat, one room, one car and one charge if it was
booked, and nothing at all otherwise.

`book_trip_broken` is the same saga with a car compensation that releases only the hold
the step reported in its output. The plain failure (a declined card) still releases
everything; but when reserve_car holds a car and then fails, it has no output, and the
car stays held. `SagaKit.explore` finds that run (tests/kit/test_kit.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from examples import travel
from saga import Parallel, Retry, Saga, Step, StepContext

if TYPE_CHECKING:
    from saga.testing.kit import Result

RETRY = Retry(attempts=3, first_delay=timedelta(seconds=2))


def reserve_flight(ctx: StepContext) -> dict[str, Any]:
    return {"seat": travel.airline.hold(ctx.input["trip_id"], ctx.idempotency_key)}


def release_flight(ctx: StepContext) -> dict[str, Any]:
    return {"released": travel.airline.release(ctx.input["trip_id"])}


def reserve_hotel(ctx: StepContext) -> dict[str, Any]:
    return {"room": travel.hotel.hold(ctx.input["trip_id"], ctx.idempotency_key)}


def release_hotel(ctx: StepContext) -> dict[str, Any]:
    return {"released": travel.hotel.release(ctx.input["trip_id"])}


def reserve_car(ctx: StepContext) -> dict[str, Any]:
    return {"car": travel.cars.hold(ctx.input["trip_id"], ctx.idempotency_key)}


def release_car(ctx: StepContext) -> dict[str, Any]:
    # By trip, not by the step's output: a car held by an attempt that then failed (and
    # so reported nothing) is released too.
    return {"released": travel.cars.release(ctx.input["trip_id"])}


def release_car_broken(ctx: StepContext) -> dict[str, Any]:
    hold = (ctx.outputs.get("reserve_car") or {}).get("car")
    return {"released": travel.cars.release_hold(hold) if hold else []}


def charge_card(ctx: StepContext) -> dict[str, Any]:
    trip = ctx.input
    return {"charge": travel.charge(trip["trip_id"], trip["card"], ctx.idempotency_key)}


def refund_card(ctx: StepContext) -> dict[str, Any]:
    return {"refunded": travel.card.release(ctx.input["trip_id"])}


def trip_steps(release_car: Any) -> list[Any]:
    return [
        Step("reserve_flight", reserve_flight, compensate=release_flight, retry=RETRY),
        Parallel(
            Step("reserve_hotel", reserve_hotel, compensate=release_hotel, retry=RETRY),
            Step("reserve_car", reserve_car, compensate=release_car, retry=RETRY,
                 timeout=timedelta(seconds=20)),
        ),
        Step("charge_card", charge_card, compensate=refund_card, retry=RETRY),
    ]


book_trip = Saga("book_trip", steps=trip_steps(release_car))
book_trip_broken = Saga("book_trip_broken", steps=trip_steps(release_car_broken))


def nothing_held_unless_booked(result: Result) -> None:
    """The invariant: a booked trip holds one of each; any other ends holding nothing."""
    trip = result.input["trip_id"]
    held = travel.held(trip)
    if result.status == "succeeded":
        for what, holds in held.items():
            assert len(holds) == 1, f"trip {trip} was booked holding {len(holds)} {what}s: {holds}"
    else:
        left = [hold for holds in held.values() for hold in holds]
        assert not left, f"trip {trip} ended {result.status} but still holds {', '.join(left)}"
