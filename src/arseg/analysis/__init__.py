"""arseg.analysis"""
