FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY adapters ./adapters
COPY common ./common
COPY fhir_mapping ./fhir_mapping
COPY gateway ./gateway
COPY fixtures ./fixtures
RUN pip install --no-cache-dir . && useradd --system --uid 10001 --no-create-home iap
USER iap
ENV IAP_ENVIRONMENT=production
EXPOSE 8080 2575
CMD ["iap-gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
