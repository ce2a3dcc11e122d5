"""The base of every error a service raises on purpose (no imports: every layer may use it)."""


class DomainError(Exception):
    """Its message tells the user what to do; `status_code` and `code` say how the API reports it
    (chatplatform.errors turns it into the one error shape)."""

    status_code = 400
    code = "invalid"


class ModelUnavailable(DomainError):
    """A model (chat, embedding) is down or refusing: the request may be tried again later."""

    status_code = 503
    code = "model_unavailable"
