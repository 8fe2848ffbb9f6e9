"""The short-schedule trainer: ``train(model, data, TrainConfig(...))`` (``loop``), its settings
(``config``), learning-rate schedules (``schedules``) and evaluation (``evaluate``).
"""
