"""What is tuned for one model, and the one store it lives in (`store`: beside the model, with its weight
fingerprint and the command that made it): searched schedules (`schedule_search`, `schedule_tables`),
AMED predictors and their distillation (`amed_predictor`, `amed_distill`), Skip-Tuning factors
(`calibration`, `skiptune_tables`)."""
