"""The one exception type a stage turns into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A problem with the user's input: printed as one line naming the culprit, exit code 2."""


class ParamsError(PipelineError):
    """params.yaml (or a variant) is wrong: unknown key, wrong type, impossible value."""
