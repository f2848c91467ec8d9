# NHS England's MESH sandbox, in its own image (it pins its own FastAPI; never install it beside the gateway).
FROM python:3.11-slim
RUN pip install --no-cache-dir mesh-sandbox==1.0.137
EXPOSE 8700
CMD ["uvicorn", "mesh_sandbox.api:app", "--host", "0.0.0.0", "--port", "8700"]
