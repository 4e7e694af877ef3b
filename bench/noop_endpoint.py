"""A no-op endpoint on the stack `mlops-nb serve` runs on (FastAPI on uvicorn, one process, the same uvicorn settings):
`POST /predict` reads the body and answers a constant. bench_serving.py measures it under the same load, as the limit.

    .venv/bin/python bench/noop_endpoint.py PORT
"""
import sys
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()


@app.post("/predict")
async def predict(request: Request):
    await request.body()
    return JSONResponse({"predictions": [{"probability": 0.5, "label": 1}]})


@app.get("/health")
async def health():
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
