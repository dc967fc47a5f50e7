"""Export stage: save the serving pipeline (`tfflannel.serving`) as one SavedModel in TF Serving's layout."""
