"""User-facing errors. Each message names what is wrong (file, row, key) so it can be fixed."""
import signal


class OmniError(Exception):
    """Base class: a mistake in input or configuration, not a bug in omnilm."""


class ConfigError(OmniError):
    """A recipe or override is invalid (unknown key, wrong type, bad value)."""


class DataError(OmniError):
    """A dataset row is malformed or refers to something that cannot be read."""


class MediaError(DataError):
    """An image or audio file is missing, corrupt, empty or too large."""


class PlaceholderMismatch(OmniError):
    """The prompt's placeholder tokens and the encoders' features disagree in number."""


class MissingDependency(OmniError):
    """An optional package or system tool is needed; the message gives the install command."""


class TrainingStopped(KeyboardInterrupt):
    """A run stopped on SIGINT or SIGTERM after saving its last complete step (a KeyboardInterrupt,
    so callers that already handle Ctrl-C handle it too)."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after saving step {step}")
        self.signum, self.step = signum, step
