"""The ground floor every stage stands on: the typed config, atomic files, the manifest, the run directory,
secrets, images, console output and errors. Nothing here imports a stage."""
