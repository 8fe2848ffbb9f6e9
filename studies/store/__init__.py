"""The stores a study lives in: Optuna storage URLs and opening (``storage``), riding a database outage
(``outage``), and the names of every Optuna attribute the toolkit writes (``attrs``)."""
