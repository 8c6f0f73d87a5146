"""Contender 3c: the lakehouse's transforms in one PySpark script, one month at a time (see spark_same.py)."""

from benchmarks.contenders.spark_same import main

if __name__ == "__main__":
    main(per_month=True)
