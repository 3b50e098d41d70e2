"""Errors of the engine-free core.

Every error Tessera raises derives from :class:`TesseraError`. Messages say what failed, quote
the offending value with ``!r`` and, where one exists, give a hint. Errors are picklable (they
must survive a trip through a Spark executor), so subclasses keep their constructor to a single
message argument.
"""

from __future__ import annotations


class TesseraError(Exception):
    """Root of every error Tessera raises on purpose."""

    def __reduce__(self):  # keep picklable even when a subclass adds attributes
        return (self.__class__, (str(self),))


class ConfigError(TesseraError):
    """``feature_repo.yaml`` (or an environment override) is missing, malformed or invalid."""


class DefinitionError(TesseraError):
    """A feature definition (entity, source, feature view, service) is invalid."""


class ExprError(DefinitionError):
    """A row expression is invalid: unknown column, wrong operand type, bad literal."""


class UnsupportedOperationError(TesseraError):
    """An engine has no compiler for an operation. Every operation must have one per engine."""


class OfflineStoreError(TesseraError):
    """The offline store could not be read or written."""


class SumOverflowError(OfflineStoreError):
    """A sum of integers left int64: in a tile, or where tiles merge into a window. Never
    wrapped round: the job that met it fails and says how to sum a float64 instead."""


SUM_HINT = ("sum a float64 instead (.cast(\"float64\") on the summed expression), or filter "
            "out the values that cannot be meant")


class UncoveredError(OfflineStoreError):
    """A read needs days the feature view's current rules never computed."""


class EntityRowsError(TesseraError):
    """Entity rows given to a read are malformed: a missing or mistyped column, a bad time."""


class OnlineRequestError(TesseraError):
    """An online read names an unknown feature or service, or its entity rows are malformed."""


class OnlineUnavailableError(TesseraError):
    """The online store (Redis) could not be reached within the configured timeout."""
