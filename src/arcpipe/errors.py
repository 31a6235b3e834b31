"""The one exception type a stage turns into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A problem with the user's input: printed as one line naming the culprit, exit code 2."""


class ParamsError(PipelineError):
    """params.yaml (or a variant) is wrong: unknown key, wrong type, impossible value."""


class BatchError(Exception):
    """An unexpected failure inside one batch of a stage's work: names the batch (its rows or
    items) and keeps the original exception as `cause` (the runner prints both in one line)."""

    def __init__(self, item: str, cause: BaseException):
        super().__init__(f"{item}: {type(cause).__name__}: {cause}")
        self.item = item
        self.cause = cause
