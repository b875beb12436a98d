"""The phone-upload web app (see ``ctai.web.app``)."""
