"""Airflow plugins shipped by the provider."""
