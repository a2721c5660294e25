"""The live service (``python -m corect.serve``): many conversations at once over
WebSocket or HTTP, one shared causal model, text encoding micro-batched across
conversations.

- :mod:`corect.serving.app`: the Starlette app (:func:`~corect.serving.app.create_app`,
  :class:`~corect.serving.app.ServeSettings`) and its endpoints;
- :mod:`corect.serving.messages`: the utterance messages, checked field by field;
- :mod:`corect.serving.sessions`: the open conversations, their limit and idle closing;
- :mod:`corect.serving.batching`: the micro-batcher and the model thread;
- :mod:`corect.serving.load`: the load test (``python -m corect.serve --bench``);
- ``corect/serving/static/``: the live page served at ``/``.

Needs the ``serve`` extra (``pip install -e .[serve]``: Starlette, uvicorn, websockets).
"""
