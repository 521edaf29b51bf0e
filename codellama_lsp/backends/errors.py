"""The one error a remote backend raises, with a message fit for the log and the user."""


class BackendError(Exception):
    """The inference server could not be reached, refused the request, or answered nonsense."""
