"""Errors of the batch pipelines."""

from __future__ import annotations

from features.errors import TesseraError


class PipelineError(TesseraError):
    """A batch job could not read its source or write its output."""


class SourceSchemaError(PipelineError):
    """A source file's columns do not match the source's declared schema."""
