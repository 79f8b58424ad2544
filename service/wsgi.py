"""The WSGI application that Gunicorn serves: ``service.wsgi:app``."""

from service.app import create_app

app = create_app()
