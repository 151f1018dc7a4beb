"""Every text the project generates: local models (`local`), an OpenAI-compatible endpoint
(`endpoint`), the SQLite cache (`cache`) and the cached-generator base (`cached`) of augmenters,
policies and the chat judge, stable seeds (`seeding`) and the embedded models (`embedded`).

Nothing here imports Lightning or the packages that use it; importing the package loads no model.
"""
