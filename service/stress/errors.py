"""The one error that stops the stress tool before it can give a verdict."""


class SetupError(Exception):
    """The check could not run: a bad argument, or a service out of reach.

    ``str()`` is the whole sentence shown to the operator; the tool exits
    with status 2.
    """
