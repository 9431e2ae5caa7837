"""Fakes of the services the bot talks to, served over loopback for tests and benches."""

from tests.fakes.fake_gateway import FakeGateway, ModelBehaviour, Reply, make_bomb_png, make_png

__all__ = ["FakeGateway", "ModelBehaviour", "Reply", "make_bomb_png", "make_png"]
