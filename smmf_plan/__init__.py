"""smmf-plan: will training this model fit, with which optimizer, on which device?"""

__version__ = "0.1.0"
