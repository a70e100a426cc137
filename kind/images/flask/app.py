"""The seed 002 Flask app: / shows what PostgreSQL answers, /metrics is Prometheus text.

The database comes from DB_HOST, DB_PORT, POSTGRES_DB, POSTGRES_USER and POSTGRES_PASSWORD.
/ answers 200 even when the database is unreachable (the page says so), so a probe of / measures
the path to the app; /db answers 200 only when the app reached PostgreSQL, 503 otherwise.
"""
import os

import psycopg2
from flask import Flask
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

app = Flask(__name__)
REQUESTS = Counter("flask_app_requests_total", "Requests served", ["path"])


def query_db():
    conn = psycopg2.connect(
        host=os.environ.get("DB_HOST", "mydb-service"),
        port=int(os.environ.get("DB_PORT", "5432")),
        dbname=os.environ.get("POSTGRES_DB", "mydb"),
        user=os.environ.get("POSTGRES_USER", "postgres"),
        password=os.environ.get("POSTGRES_PASSWORD", "postgres"),
        connect_timeout=3,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version(), now()")
            return cur.fetchone()
    finally:
        conn.close()


@app.route("/")
def index():
    REQUESTS.labels(path="/").inc()
    try:
        version, now = query_db()
        db = f"<p>database: {version}</p><p>time: {now}</p>"
    except Exception as e:  # the page reports the database error, the probe measures the app
        db = f"<p>database unreachable: {type(e).__name__}</p>"
    return f"<!doctype html><html><head><title>flask-app</title></head><body><h1>flask-app</h1>{db}</body></html>"


@app.route("/db")
def db():
    REQUESTS.labels(path="/db").inc()
    try:
        version, _ = query_db()
        return f"{version}\n"
    except Exception as e:
        return f"database unreachable: {type(e).__name__}\n", 503


@app.route("/metrics")
def metrics():
    REQUESTS.labels(path="/metrics").inc()
    return generate_latest(), 200, {"Content-Type": CONTENT_TYPE_LATEST}


if __name__ == "__main__":
    app.run(host="::", port=5000, threaded=True)
