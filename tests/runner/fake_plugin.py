"""`--plugin tests.runner.fake_plugin`: registers the fake test methods in a worker or subprocess."""

from tests.runner.fakes import register

register()
