"""The base of every error a service raises on purpose (no imports: every layer may use it)."""


class DomainError(Exception):
    """Its message tells the user what to do; `status_code` and `code` say how the API reports it
    (restapi.errors turns it into the one error shape)."""

    status_code = 400
    code = "invalid"


class ModelUnavailable(DomainError):
    """A model (chat, embedding) is down or refusing: the request may be tried again later."""

    status_code = 503
    code = "model_unavailable"


def model_call_error(exc: BaseException, model_name: str) -> DomainError:
    """What to tell the caller when a model call failed. A refusal the caller's own configuration
    caused (an endpoint the outbound guard refuses, a model server answering 4xx: a DomainError
    below 500 anywhere down the chain the model client wrapped it in) is said as it is; anything
    else is the model being unavailable, worth trying again."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, DomainError) and cause.status_code < 500:
            return cause
        cause = cause.__cause__ or cause.__context__
    return ModelUnavailable(f"the model {model_name} did not answer ({type(exc).__name__}: {exc}); try again")
