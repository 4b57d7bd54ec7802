"""Getting a trained model out: merge an adapter into its base, write GGUF + an Ollama Modelfile, prove the
export behaves like the trained model (verify), and upload to the Hugging Face Hub with a model card.

Modules: merge (adapter -> standalone Hugging Face model), gguf (GGUF writer and Modelfile), verify
(train/serve parity), card (the run's model card), hub (staging and upload). Each is a library function
the CLI (`tunelab export ...`) only calls.
"""
